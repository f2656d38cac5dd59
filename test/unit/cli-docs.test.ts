// The manual page and the bash completion are generated from the command definitions: the
// committed files must be what the generator writes now (`npm run docs:cli`), the completion must
// complete in bash, and groff must render the page without a warning.
import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { COMPLETION_PATH, MAN_PAGE_PATH, renderCompletion, renderManPage } from '../../src/cli/cli-docs.js';
import { COMMANDS } from '../../src/cli/command-spec.js';
import { packageVersion } from '../../src/version.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const committed = (rel: string): string => readFileSync(`${root}${rel}`, 'utf8');

function has(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

/** COMPREPLY for a command line typed so far (the last word is the one being completed). */
function complete(line: string): string[] {
  const words = line.split(' ');
  const script = [
    // A stand-in xl: the domains a dom0 would list.
    'xl() { printf "Name ID Mem VCPUs State Time(s)\\nDomain-0 0 1024 1 r----- 1.0\\nweb01 1 512 1 -b---- 2.0\\nweb02 2 512 1 -b---- 2.0\\n"; }',
    `. ${JSON.stringify(`${root}${COMPLETION_PATH}`)}`,
    `COMP_WORDS=(${words.map((w) => JSON.stringify(w)).join(' ')})`,
    `COMP_CWORD=${words.length - 1}`,
    '_devmigrate',
    'printf "%s\\n" "${COMPREPLY[@]}"',
  ].join('\n');
  const r = spawnSync('bash', ['-c', script], { encoding: 'utf8' });
  return r.stdout.split('\n').filter(Boolean).sort();
}

describe('man page and bash completion', () => {
  it('are current: what `npm run docs:cli` writes from the command definitions', () => {
    expect(committed(MAN_PAGE_PATH), 'run npm run docs:cli').toBe(renderManPage(packageVersion()));
    expect(committed(COMPLETION_PATH), 'run npm run docs:cli').toBe(renderCompletion());
  });

  it('the manual names every command and option of --help', () => {
    const man = renderManPage('0.0.0');
    for (const c of COMMANDS.filter((x) => x.hidden !== true)) {
      expect(man).toContain(`.SS "devmigrate ${c.path.join(' ')}`);
      for (const o of c.options)
        expect(man, `${c.path.join(' ')} --${o.name}`).toContain(`\\-\\-${o.name.replace(/-/g, '\\-')}`);
    }
    expect(man).toContain('.SH EXIT STATUS');
    expect(man).toMatch(/\\fB129, 130, 143\\fR/);
  });

  it('groff renders the manual without a warning', () => {
    if (!has('groff')) {
      console.log('skipped: groff is not installed (apt-get install groff-base)');
      return;
    }
    const r = spawnSync('groff', ['-man', '-Tutf8', '-ww', '-z', `${root}${MAN_PAGE_PATH}`], {
      encoding: 'utf8',
    });
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
  });

  it('bash completes commands, subcommands, options, their choices, steps and domain names', () => {
    expect(complete('devmigrate mi')).toEqual(['migrate']);
    expect(complete('devmigrate sim ')).toEqual(['down', 'up']);
    expect(complete('devmigrate agent --log-format j')).toEqual(['journal', 'json']);
    expect(complete('devmigrate agent --log-level ')).toEqual(['debug', 'error', 'info', 'notice', 'warn']);
    expect(complete('devmigrate migrate --no-')).toEqual(['--no-keep-job', '--no-live']);
    expect(complete('devmigrate --config /etc/xen/devmigrate.json migrate we')).toEqual(['web01', 'web02']);
    expect(complete('devmigrate migrate -s ssh we')).toEqual(['web01', 'web02']);
    expect(complete('devmigrate step web01 pre')).toEqual(['pre-suspend']);
    expect(complete('devmigrate check ')).toEqual(['web01', 'web02']); // dom0 is left out
    expect(complete('devmigrate report web01 --')).toEqual([
      '--config',
      '--help',
      '--json',
      '--svg',
      '--width',
    ]);
  });
});
