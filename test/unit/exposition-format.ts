// A checker of Prometheus' text exposition format (0.0.4) for the tests of the metrics textfile:
// what node_exporter's textfile collector would refuse, it refuses (with vitest's expect).
import { expect } from 'vitest';

/** A checker of the text exposition format (0.0.4): what node_exporter would refuse, it refuses. */
export function parseExposition(text: string): Map<string, { type: string; samples: [string, number][] }> {
  const families = new Map<string, { type: string; samples: [string, number][] }>();
  let current: string | undefined;
  expect(text.endsWith('\n')).toBe(true);
  for (const line of text.trimEnd().split('\n')) {
    const help = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*$/.exec(line);
    if (help) continue;
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (type) {
      expect(families.has(type[1] ?? ''), `TYPE twice for ${type[1]}`).toBe(false);
      families.set(type[1] ?? '', { type: type[2] ?? '', samples: [] });
      current = type[1];
      continue;
    }
    const m =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*")*)?\})? (-?[0-9.e+]+|\+Inf|NaN)$/.exec(
        line,
      );
    expect(m, `not a sample line: ${line}`).not.toBeNull();
    const name = m?.[1] ?? '';
    const family = current ?? '';
    expect(name === family || name.startsWith(`${family}_`), `${name} outside its family ${family}`).toBe(
      true,
    );
    families.get(family)?.samples.push([`${name}${m?.[2] ?? ''}`, Number(m?.[5])]);
  }
  return families;
}
