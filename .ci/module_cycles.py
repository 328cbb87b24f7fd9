#!/usr/bin/env python3
"""Fail if two modules of one crate import each other (directly): `use crate::a` in b.rs and
`use crate::b` (or `crate::b::`) in a.rs. The crate root counts as module `crate`."""
import pathlib, re, sys

bad = []
for src in sorted(pathlib.Path("crates").glob("*/src")):
    mods = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        name = "crate" if str(rel) in ("lib", "main") else str(rel).replace("/", "::").removesuffix("::mod")
        text = f.read_text()
        # Drop comments and the test modules (tests may use anything).
        text = re.sub(r"//[^\n]*", "", text)
        text = text.split("#[cfg(test)]")[0]
        deps = set()
        for m in re.finditer(r"\bcrate::([a-z_][a-z0-9_]*)", text):
            deps.add(m.group(1))
        if name != "crate" and re.search(r"\bcrate::(\{[^}]*\b)?[A-Z]", text):
            deps.add("crate")  # items defined in the crate root
        if name != "crate":
            deps |= {m for m in re.findall(r"\bcrate::\{([^}]*)\}", text) for m in re.findall(r"\b([a-z_][a-z0-9_]*)::", m)}
        if name == "crate":
            deps |= set(re.findall(r"^\s*(?:pub\s+)?use\s+([a-z_][a-z0-9_]*)::", text, re.M))
            deps.discard("std")
        mods[name] = deps
    top = {n.split("::")[0] for n in mods}
    for a, da in mods.items():
        for b in da:
            if b == a or (b not in top and b != "crate"):
                continue
            db = mods.get(b, set())
            if a.split("::")[0] in db:
                pair = tuple(sorted((a, b)))
                bad.append((str(src.parent.name),) + pair)
bad = sorted(set(bad))
for c, a, b in bad:
    print(f"{c}: modules {a} and {b} import each other")
sys.exit(1 if bad else 0)
