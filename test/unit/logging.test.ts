// Specification of the agent's log lines: journald priority prefixes without timestamps under
// systemd, human lines with time elsewhere, JSON on request, job context on every job line.
import { describe, it, expect } from 'vitest';
import { createLogger, jobLogger, LineCapture, resolveFormat, setLevel } from '../../src/agent/logger.js';

async function flush(): Promise<void> {
  await new Promise((r) => setImmediate(r));
}

describe('log format selection', () => {
  it('uses the journal format when systemd started us (INVOCATION_ID or JOURNAL_STREAM)', () => {
    expect(resolveFormat('auto', { INVOCATION_ID: 'abc' })).toBe('journal');
    expect(resolveFormat('auto', { JOURNAL_STREAM: '8:1234' })).toBe('journal');
    expect(resolveFormat('auto', {})).toBe('human');
    expect(resolveFormat('json', { INVOCATION_ID: 'abc' })).toBe('json');
  });
});

describe('journal lines', () => {
  it('carry the syslog priority prefix per level and no timestamp', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', level: 'debug', stream: cap });
    log.error('boom');
    log.warn('careful');
    log.info('hello');
    log.debug('detail');
    await flush();
    expect(cap.lines).toEqual(['<3>boom', '<4>careful', '<6>hello', '<7>detail']);
  });

  it('repeat the prefix on every line of a multi-line message', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', stream: cap });
    log.warn('first\nsecond');
    await flush();
    expect(cap.lines).toEqual(['<4>first', '<4>second']);
  });
});

describe('job context', () => {
  it('puts domid, job, phase and device first on every line of a job logger', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', stream: cap });
    const job = jobLogger(log, { domid: 5, job: 'j-1' });
    const dev = jobLogger(job, { phase: 'pre-suspend', device: 'vbd/51712' });
    dev.info('copy started', { bytes: 10 });
    job.info('accepted');
    await flush();
    expect(cap.lines).toEqual([
      '<6>copy started domid=5 job=j-1 phase=pre-suspend device=vbd/51712 bytes=10',
      '<6>accepted domid=5 job=j-1',
    ]);
  });

  it('quotes values with spaces so a line stays one record', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', stream: cap });
    log.warn('refused', { domid: 3, reason: 'no tool configured' });
    await flush();
    expect(cap.lines[0]).toBe('<4>refused domid=3 reason="no tool configured"');
  });
});

describe('human and JSON lines', () => {
  it('human lines start with an ISO time and the level', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'human', stream: cap });
    jobLogger(log, { domid: 7 }).info('hi');
    await flush();
    expect(cap.lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info {3}hi domid=7$/);
  });

  it('JSON lines parse and keep the context as fields', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'json', stream: cap });
    jobLogger(log, { domid: 7, job: 'x', phase: 'sync', device: 'vif/0' }).warn('slow', { ms: 12 });
    await flush();
    const rec = JSON.parse(cap.lines[0] ?? '') as Record<string, unknown>;
    expect(rec).toMatchObject({
      level: 'warn',
      msg: 'slow',
      domid: 7,
      job: 'x',
      phase: 'sync',
      device: 'vif/0',
      ms: 12,
    });
    expect(typeof rec['time']).toBe('string');
  });
});

describe('levels', () => {
  it('drops lines below the configured level and follows a runtime change', async () => {
    const cap = new LineCapture();
    const log = createLogger({ format: 'journal', level: 'warn', stream: cap });
    const child = jobLogger(log, { domid: 1 });
    child.info('hidden');
    child.warn('shown');
    setLevel(log, 'debug');
    child.debug('now shown');
    await flush();
    expect(cap.lines).toEqual(['<4>shown domid=1', '<7>now shown domid=1']);
  });
});
