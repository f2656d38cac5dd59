// `npm run package`: builds the Debian package of xen-devmigrate from the build (dist/) with
// dpkg-deb, offline: the program and its production node modules, the unit, the conffile, docs,
// a machine-readable copyright naming every bundled module's licence, maintainer scripts from
// packaging/deb. The last line printed is the path of the .deb (docs/packaging.md).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const NAME = 'xen-devmigrate';
const LIB = `usr/lib/${NAME}`;
const DOC = `usr/share/doc/${NAME}`;
// /usr/lib: Debian 13's lintian reports /lib/systemd/system as an aliased location (merged /usr);
// systemd reads both, and a Debian 12 dom0 has merged /usr too.
const UNIT = 'usr/lib/systemd/system/xen-devmigrate.service';
const CONFFILE = 'etc/xen/devmigrate.json';
/** Debian's convention for who builds a package: $DEBFULLNAME <$DEBEMAIL>. */
const MAINTAINER = `${process.env.DEBFULLNAME || 'xen-devmigrate developers'} <${process.env.DEBEMAIL || 'devmigrate@example.org'}>`;
/** The simulated host's entry points: they import xen-mocks, which is not shipped. */
const NOT_SHIPPED = ['src/cli/commands/sim-serve.js', 'src/cli/commands/demo.js'];
/** What the agent and the CLI run besides node: rsync and ssh (disk copy), xl (migrate), and
 * the Xen libraries loaded through koffi, which come with xen-utils-4.x (libxenmisc4.x). */
const DEPENDS = [
  'nodejs (>= 20)',
  'rsync',
  'openssh-client',
  'xen-utils-4.20 | xen-utils-4.17',
  'libxenstore4',
];
const RECOMMENDS = ['xenstore-utils'];
/** The mirror method's destination end (qemu-nbd serves the target, qemu-img creates it). */
const SUGGESTS = ['qemu-utils'];
/** The operator's generated man page and bash completion, picked up when the build has them. */
const MAN_CANDIDATES = ['dist/man/devmigrate.8', 'man/devmigrate.8', 'docs/devmigrate.8'];
const COMPLETION_CANDIDATES = [
  'dist/completion/devmigrate.bash',
  'dist/completion/devmigrate',
  'completion/devmigrate.bash',
  'contrib/bash-completion/devmigrate',
];
const DOCS = ['README.md', 'docs/operations.md', 'docs/protocol.md', 'docs/config.md'];

class PackageError extends Error {
  name = 'PackageError';
}

function usage() {
  return `usage: npm run package [-- --version V] [--out DIR]
  --version  Debian version of the package (default: package.json's version; also $DEVMIGRATE_DEB_VERSION)
  --out      folder for the .deb (default: dist/deb)`;
}

function parseArgs(argv) {
  const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8'));
  const opts = {
    version: process.env.DEVMIGRATE_DEB_VERSION || pkg.version,
    out: path.join(REPO, 'dist/deb'),
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--version') opts.version = argv[++i];
    else if (a === '--out') opts.out = path.resolve(argv[++i] ?? '');
    else {
      console.error(usage());
      process.exit(a === '--help' || a === '-h' ? 0 : 64);
    }
  }
  // Debian policy 5.6.12, native form (no revision): the version goes into a file name and argv.
  if (!/^[0-9][A-Za-z0-9.+~]*$/.test(opts.version ?? ''))
    throw new PackageError(`version ${JSON.stringify(opts.version)} is not a Debian native version`);
  return { ...opts, pkg };
}

const run = (cmd, args, opts = {}) =>
  execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000, ...opts });

function walk(dir, out = []) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else out.push(p);
  }
  return out;
}

function write(root, rel, text, mode = 0o644) {
  const p = path.join(root, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, text);
  fs.chmodSync(p, mode);
}

function copy(root, rel, src, mode = 0o644) {
  write(root, rel, fs.readFileSync(src), mode);
}

/** Production modules only, pruned offline from this checkout's node_modules (no registry). */
function stageModules(lib, pkg) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'devmigrate-prune-'));
  try {
    fs.copyFileSync(path.join(REPO, 'package.json'), path.join(tmp, 'package.json'));
    fs.copyFileSync(path.join(REPO, 'package-lock.json'), path.join(tmp, 'package-lock.json'));
    fs.cpSync(path.join(REPO, 'node_modules'), path.join(tmp, 'node_modules'), { recursive: true });
    run('npm', ['prune', '--omit=dev', '--offline', '--no-audit', '--no-fund', '--ignore-scripts'], {
      cwd: tmp,
    });
    fs.cpSync(path.join(tmp, 'node_modules'), path.join(lib, 'node_modules'), { recursive: true });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  const nm = path.join(lib, 'node_modules');
  for (const dep of Object.keys(pkg.dependencies ?? {})) {
    if (!fs.existsSync(path.join(nm, dep)))
      throw new PackageError(`production dependency ${dep} missing after prune`);
  }
  return nm;
}

/** Every package folder under node_modules (scoped and nested too), with its package.json. */
function modulesOf(nm) {
  const found = [];
  const visit = (dir) => {
    if (!fs.existsSync(dir)) return;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      if (!e.isDirectory() || e.name.startsWith('.')) continue;
      const p = path.join(dir, e.name);
      if (e.name.startsWith('@')) {
        visit(p);
        continue;
      }
      const pj = path.join(p, 'package.json');
      if (fs.existsSync(pj)) found.push({ dir: p, meta: JSON.parse(fs.readFileSync(pj, 'utf8')) });
      visit(path.join(p, 'node_modules'));
    }
  };
  visit(nm);
  return found;
}

const LICENSE_FILE = /^(licen[cs]e|copying|notice)(\.(md|txt|markdown))?$/i;

/**
 * Keeps what runs: JavaScript, JSON, the linux-x64 glibc koffi binary. Drops docs, typings,
 * maps, tests, C sources, koffi's build helper and other platforms' binaries. Licence texts are
 * read first: they go into the copyright file (lintian: extra-license-file).
 */
function trimModules(nm) {
  const modules = modulesOf(nm).map((m) => {
    const licenseFile = fs.readdirSync(m.dir).find((f) => LICENSE_FILE.test(f));
    return {
      ...m,
      licenseText: licenseFile ? fs.readFileSync(path.join(m.dir, licenseFile), 'utf8') : undefined,
    };
  });
  for (const f of walk(nm)) {
    const rel = path.relative(nm, f);
    const base = path.basename(f);
    const keep =
      /\.(c?js|mjs|json)$/.test(base) || (base === 'koffi.node' && rel.split(path.sep).includes('linux_x64'));
    const dropDir = /(^|\/)(test|tests|__tests__|example|examples|doc|docs|benchmark|\.github)\//.test(rel);
    if (!keep || dropDir || base === 'cnoke.cjs' || base === '.package-lock.json') fs.rmSync(f);
  }
  // Empty folders left by the trim.
  const prune = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true }))
      if (e.isDirectory()) prune(path.join(dir, e.name));
    if (fs.readdirSync(dir).length === 0) fs.rmdirSync(dir);
  };
  prune(nm);
  return modules;
}

/** Every static relative import of a shipped file must resolve inside the package. */
function checkImports(dist) {
  const broken = [];
  for (const f of walk(dist).filter((p) => p.endsWith('.js'))) {
    for (const m of fs.readFileSync(f, 'utf8').matchAll(/^(?:import|export)\s[^;]*?from\s+'(\.[^']+)'/gm)) {
      if (!fs.existsSync(path.resolve(path.dirname(f), m[1])))
        broken.push(`${path.relative(dist, f)} -> ${m[1]}`);
    }
  }
  if (broken.length > 0) throw new PackageError(`imports leaving the product tree: ${broken.join(', ')}`);
}

function licenseId(meta) {
  const l = meta.license ?? meta.licenses?.[0]?.type ?? meta.licenses?.[0];
  return typeof l === 'string' ? l : 'UNKNOWN';
}

function copyrightOf(meta, text) {
  const fromText = text?.match(/^\s*(?:\(c\)\s*)?copyright\s+(?:\(c\)\s*)?(.+)$/im)?.[1]?.trim();
  const author = typeof meta.author === 'string' ? meta.author : meta.author?.name;
  return fromText ?? (author ? author : `the ${meta.name} authors`);
}

/** DEP-5 copyright: the project, then every bundled module, then each licence text once. */
function copyright(pkg, modules, root) {
  const indent = (t) =>
    t
      .trim()
      .split('\n')
      .map((l) => (l.trim() === '' ? ' .' : ` ${l}`))
      .join('\n');
  const paras = [
    [
      'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/',
      `Upstream-Name: ${NAME}`,
      'Comment: the program is built from its own sources; the node modules under',
      ` /${LIB}/node_modules are bundled as published on the npm registry (production`,
      ' dependencies only, trimmed to their JavaScript and the linux-x64 koffi binary).',
    ].join('\n'),
    ['Files: *', `Copyright: the ${NAME} developers`, `License: ${pkg.license}`].join('\n'),
  ];
  const texts = new Map();
  for (const m of modules.sort(
    (a, b) => a.meta.name.localeCompare(b.meta.name) || a.dir.localeCompare(b.dir),
  )) {
    const id = licenseId(m.meta)
      .replace(/[()]/g, '')
      .replace(/\s+OR\s+/g, ' or ');
    paras.push(
      [
        `Files: ${path.relative(root, m.dir)}/*`,
        `Copyright: ${copyrightOf(m.meta, m.licenseText)}`,
        `License: ${id}`,
        `Comment: ${m.meta.name} ${m.meta.version}`,
      ].join('\n'),
    );
    if (m.licenseText && !texts.has(id)) texts.set(id, m.licenseText);
  }
  if (!texts.has(pkg.license)) {
    texts.set(pkg.license, fs.readFileSync(path.join(REPO, 'packaging/MIT.txt'), 'utf8'));
  }
  for (const [id, text] of [...texts].sort()) paras.push(`License: ${id}\n${indent(text)}`);
  return paras.join('\n\n') + '\n';
}

function changelog(version) {
  const date = new Date(Number(process.env.SOURCE_DATE_EPOCH ?? Date.now() / 1000) * 1000).toUTCString();
  return `${NAME} (${version}) unstable; urgency=medium

  * Built from the xen-devmigrate sources by npm run package (see README.md).

 -- ${MAINTAINER}  ${date.replace(/^(\w+), (\d+) (\w+) (\d+) (\S+) GMT$/, '$1, $2 $3 $4 $5 +0000')}
`;
}

/** libc6 (>= highest GLIBC_x.y symbol version the koffi binary needs): its shlibs dependency. */
function libcDepends(root) {
  const elves = walk(root).filter((f) => f.endsWith('.node'));
  let max = '2.2.5';
  for (const f of elves) {
    for (const v of run('objdump', ['-T', f]).match(/GLIBC_[0-9.]+/g) ?? []) {
      const ver = v.slice(6);
      if (ver.localeCompare(max, undefined, { numeric: true }) > 0) max = ver;
    }
  }
  return elves.length > 0 ? [`libc6 (>= ${max})`] : [];
}

/** gzip -9n: no name, no time stamp in the header (reproducible; lintian checks both). */
const gzip = (data) => zlib.gzipSync(data, { level: 9 });

function firstExisting(list) {
  return list.map((p) => path.join(REPO, p)).find((p) => fs.existsSync(p));
}

function main() {
  const { version, out, pkg } = parseArgs(process.argv.slice(2));
  const entry = path.join(REPO, 'dist/src/cli/main.js');
  if (!fs.existsSync(entry)) throw new PackageError('dist/src/cli/main.js missing: run npm run build first');
  for (const tool of ['dpkg-deb', 'objdump', 'md5sum']) {
    try {
      run('sh', ['-c', `command -v ${tool}`]);
    } catch {
      throw new PackageError(`${tool} not found (Debian packages dpkg, binutils, coreutils)`);
    }
  }
  const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'devmigrate-deb-'));
  try {
    const root = path.join(stage, 'root');
    const lib = path.join(root, LIB);
    // The product tree only: src and native-bindings (no test, bench, e2e, xen-mocks, C shims).
    for (const part of ['src', 'native-bindings']) {
      fs.cpSync(path.join(REPO, 'dist', part), path.join(lib, 'dist', part), {
        recursive: true,
        filter: (src) =>
          fs.statSync(src).isDirectory() ||
          (/\.js$/.test(src) && !NOT_SHIPPED.includes(path.relative(path.join(REPO, 'dist'), src))),
      });
    }
    checkImports(path.join(lib, 'dist'));
    fs.chmodSync(path.join(lib, 'dist/src/cli/main.js'), 0o755);
    // The runtime needs package.json for "type": "module"; nothing else of it.
    write(
      root,
      `${LIB}/package.json`,
      JSON.stringify(
        {
          name: pkg.name,
          version,
          description: pkg.description,
          type: pkg.type,
          license: pkg.license,
          private: true,
          dependencies: pkg.dependencies,
        },
        null,
        2,
      ) + '\n',
    );
    const nm = stageModules(lib, pkg);
    const modules = trimModules(nm);
    write(
      root,
      'usr/sbin/devmigrate',
      `#!/bin/sh\n# devmigrate: the xen-devmigrate command (agent and CLI); see devmigrate --help.\nexec /usr/bin/node /${LIB}/dist/src/cli/main.js "$@"\n`,
      0o755,
    );
    copy(root, UNIT, path.join(REPO, 'systemd/xen-devmigrate.service'));
    copy(root, CONFFILE, path.join(REPO, 'packaging/devmigrate.json'));
    for (const d of DOCS)
      if (fs.existsSync(path.join(REPO, d))) copy(root, `${DOC}/${path.basename(d)}`, path.join(REPO, d));
    write(root, `${DOC}/copyright`, copyright(pkg, modules, root));
    write(root, `${DOC}/changelog.gz`, gzip(changelog(version)));
    const man = firstExisting(MAN_CANDIDATES);
    if (man) write(root, 'usr/share/man/man8/devmigrate.8.gz', gzip(fs.readFileSync(man)));
    const completion = firstExisting(COMPLETION_CANDIDATES);
    if (completion) copy(root, 'usr/share/bash-completion/completions/devmigrate', completion);

    // Control area.
    const files = walk(root).filter((f) => fs.lstatSync(f).isFile());
    const md5 = run(
      'md5sum',
      files.map((f) => path.relative(root, f)),
      { cwd: root, maxBuffer: 64 << 20 },
    );
    const installedKb = Math.ceil(files.reduce((n, f) => n + fs.statSync(f).size, 0) / 1024);
    write(root, 'DEBIAN/md5sums', md5);
    write(root, 'DEBIAN/conffiles', `/${CONFFILE}\n`);
    for (const s of ['postinst', 'prerm', 'postrm'])
      copy(root, `DEBIAN/${s}`, path.join(REPO, 'packaging/deb', s), 0o755);
    write(
      root,
      'DEBIAN/control',
      [
        `Package: ${NAME}`,
        `Version: ${version}`,
        'Architecture: amd64',
        `Maintainer: ${MAINTAINER}`,
        `Installed-Size: ${installedKb}`,
        `Depends: ${[...libcDepends(lib), ...DEPENDS].join(', ')}`,
        `Recommends: ${RECOMMENDS.join(', ')}`,
        `Suggests: ${SUGGESTS.join(', ')}`,
        'Section: admin',
        'Priority: optional',
        'Homepage: https://xenproject.org/',
        "Description: migration of a Xen domain's devices, driven through XenStore",
        ' The devmigrate agent runs in dom0 as a systemd service. A toolstack (xl',
        ' through devmigrate migrate, a script, anything that writes XenStore) writes a',
        ' migration job; the agent drives every device of the domain (disks, network,',
        ' tools of your own) through test, pre-suspend, post-suspend and sync, and',
        ' recovers the devices and resumes the domain at the source when anything fails.',
        '',
      ].join('\n'),
    );
    // Modes: directories 0755, files 0644 but the command, the CLI entry and the maintainer
    // scripts (node modules are loaded, never executed: their stray x bits go).
    const executable = new Set([
      'usr/sbin/devmigrate',
      `${LIB}/dist/src/cli/main.js`,
      'DEBIAN/postinst',
      'DEBIAN/prerm',
      'DEBIAN/postrm',
    ]);
    // A module file with a #! line keeps x (lintian: script-not-executable).
    const shebang = (f) => fs.readFileSync(f).subarray(0, 2).toString() === '#!';
    for (const f of walk(root))
      fs.chmodSync(f, executable.has(path.relative(root, f)) || shebang(f) ? 0o755 : 0o644);
    const dirs = (d) => {
      fs.chmodSync(d, 0o755);
      for (const e of fs.readdirSync(d, { withFileTypes: true }))
        if (e.isDirectory()) dirs(path.join(d, e.name));
    };
    dirs(root);

    fs.mkdirSync(out, { recursive: true });
    const deb = path.join(out, `${NAME}_${version}_amd64.deb`);
    run('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', root, deb]);
    console.log(`package: ${modules.length} bundled modules, ${installedKb} KiB installed`);
    console.log(deb);
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
}

try {
  main();
} catch (err) {
  console.error(`package: ${err instanceof PackageError ? err.message : (err.stack ?? err)}`);
  process.exit(1);
}
