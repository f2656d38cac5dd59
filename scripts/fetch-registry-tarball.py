#!/usr/bin/env python3
"""Fetches one npm-registry package tarball, verifies it and unpacks it (scripts/setup.sh uses it
for Node.js on Debian 12, whose archive has only Node 18).

usage: fetch-registry-tarball.py NAME VERSION INTEGRITY DEST

The pinned INTEGRITY (sha512, as in package-lock.json) must equal the registry's own record of
that version, and the downloaded bytes must match both it and the registry's sha1 shasum. The
tarball's `package/` folder becomes DEST (created; must not exist). Standard library only.
"""
import base64
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import urllib.request

REGISTRY = "https://registry.npmjs.org"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,213}$")
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


def fail(msg):
    print(f"fetch-registry-tarball: {msg}", file=sys.stderr)
    sys.exit(1)


def get(url, timeout):
    req = urllib.request.Request(url, headers={"Accept": "application/json, */*"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def main(argv):
    if len(argv) != 5:
        fail("usage: fetch-registry-tarball.py NAME VERSION INTEGRITY DEST")
    name, version, integrity, dest = argv[1:]
    if not NAME_RE.match(name) or not VERSION_RE.match(version):
        fail(f"bad package name or version: {name}@{version}")
    if not integrity.startswith("sha512-"):
        fail("INTEGRITY must be a sha512-... value")
    if os.path.exists(dest):
        fail(f"{dest} exists already")

    try:
        meta = json.loads(get(f"{REGISTRY}/{name}/{version}", 60))
    except Exception as e:  # network, HTTP or JSON: one clear line
        hint = ""
        if "CERTIFICATE_VERIFY_FAILED" in str(e):
            # A network that intercepts HTTPS: its CA is not in this system's store yet.
            hint = (" (the certificate is not trusted here: if this network intercepts HTTPS, put its CA in"
                    " /usr/local/share/ca-certificates/ and run update-ca-certificates)")
        fail(f"cannot read {REGISTRY}/{name}/{version}: {e}{hint}")
    dist = meta.get("dist") or {}
    if dist.get("integrity") != integrity:
        fail(f"{name}@{version}: the registry records integrity {dist.get('integrity')}, pinned {integrity}")
    url = dist.get("tarball", "")
    if not url.startswith(f"{REGISTRY}/{name}/-/"):
        fail(f"unexpected tarball URL {url!r}")

    print(f"fetch-registry-tarball: downloading {url}", file=sys.stderr)
    try:
        data = get(url, 600)
    except Exception as e:
        fail(f"cannot download {url}: {e}")
    got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != integrity:
        fail(f"{url}: sha512 mismatch (got {got})")
    if dist.get("shasum") and hashlib.sha1(data).hexdigest() != dist["shasum"]:
        fail(f"{url}: sha1 does not match the registry's shasum {dist['shasum']}")

    tmp = dest + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            parts = m.name.split("/")
            # Only package/..., no absolute paths, no "..", no links leaving the tree, no devices.
            if parts[0] != "package" or m.name.startswith("/") or ".." in parts:
                fail(f"refusing tar member {m.name!r}")
            if m.issym() or m.islnk():
                if m.linkname.startswith("/") or ".." in m.linkname.split("/"):
                    fail(f"refusing link {m.name!r} -> {m.linkname!r}")
            elif not (m.isfile() or m.isdir()):
                fail(f"refusing special file {m.name!r}")
            rel = "/".join(parts[1:])
            if rel == "":
                continue
            m.name = rel
            if m.islnk():
                m.linkname = "/".join(m.linkname.split("/")[1:])
            # Members were checked above; newer Pythons also want an explicit filter.
            extra = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
            tar.extract(m, tmp, set_attrs=True, **extra)
    os.rename(tmp, dest)
    print(f"fetch-registry-tarball: {name}@{version} verified ({integrity[:19]}...) into {dest}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
