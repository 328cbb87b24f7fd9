#!/usr/bin/env python3
"""Fail if two modules of one crate import each other.

A module's dependencies are the sibling or parent modules its non-test code names:
`crate::a::…`, `crate::{a::…}`, `crate::Item` (an item of the crate root), `super::…` (its
parent), and for a root, the modules its `use` lines name. Test modules (`#[cfg(test)] mod …
{ … }`, brace-matched) and comments are ignored. Reported: every pair that names each other,
and every longer import cycle."""
import pathlib, re, sys


def strip_tests(text):
    out, i = [], 0
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*|//[^\n]*\n\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text[i:])
        if not m:
            out.append(text[i:])
            return "".join(out)
        start = i + m.start()
        j = i + m.end()
        depth = 1
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        out.append(text[i:start])
        i = j


def module_name(src, f):
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"], []):
        return "crate"
    return "::".join(parts)


bad = set()
for src in sorted(pathlib.Path("crates").glob("*/src")):
    deps = {}
    for f in src.rglob("*.rs"):
        name = module_name(src, f)
        text = re.sub(r"//[^\n]*", "", f.read_text())
        text = strip_tests(text)
        if re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*;", text):
            text = re.sub(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*;", "", text)
        d = set()
        for m in re.finditer(r"\bcrate::([a-z_][a-z0-9_]*)\b(?!\s*\()", text):
            d.add(m.group(1))
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
            d |= set(re.findall(r"\b([a-z_][a-z0-9_]*)::", group))
            if re.search(r"(^|[,{\s])[A-Z]", group):
                d.add("crate")
        if name != "crate" and re.search(r"\bcrate::[A-Z]", text):
            d.add("crate")
        if re.search(r"\bsuper::", text) and name != "crate":
            parent = name.rsplit("::", 1)[0] if "::" in name else "crate"
            d.add(parent)
        if name == "crate" or name.count("::") == 0:
            own_mods = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", text, re.M))
            uses = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+(?:self::)?([a-z_][a-z0-9_]*)::", text, re.M))
            prefix = "" if name == "crate" else name + "::"
            d |= {prefix + u for u in uses & own_mods}
        d.discard(name)
        deps[name] = {x for x in d if x != "std"}
    names = set(deps)
    graph = {a: {b for b in ds if b in names} for a, ds in deps.items()}
    # every cycle, found by DFS from each node
    crate = src.parent.name
    for a in graph:
        stack = [(a, [a])]
        while stack:
            node, path = stack.pop()
            for b in graph[node]:
                if b == a:
                    cyc = path
                    k = cyc.index(min(cyc))
                    bad.add((crate, tuple(cyc[k:] + cyc[:k])))
                elif b not in path and len(path) < 8:
                    stack.append((b, path + [b]))
for crate, cyc in sorted(bad):
    print(f"{crate}: import cycle {' -> '.join(cyc + (cyc[0],))}")
sys.exit(1 if bad else 0)
