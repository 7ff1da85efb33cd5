#!/usr/bin/env python3
"""Fails when two source files of one crate import each other, directly or through others: the module graph of
every crate of the workspace must be acyclic (a type that two files both need belongs to a third).

An edge goes from a file to every crate-local module it names in a path (`use crate::a::b`, `crate::a::b::f()`,
`super::x`, `self::y`, `child::z`), resolved to that module's file. A parent's `mod child;` declaration and its
`pub use child::Item;` re-exports are its interface, not dependencies of its code, so they are not edges; a parent
whose code uses its child's items has one. A file's `#[cfg(test)] mod tests` is left out. Usage: scripts/check-cycles.py [crate dirs...] (default: every crate with a
src/ folder)."""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def module_files(src):
    """Module path (tuple) -> file, for every .rs file under src."""
    files = {}
    for dirpath, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            files[tuple(rel)] = os.path.join(dirpath, name)
    return files


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def edges(crate_dir):
    src = os.path.join(crate_dir, "src")
    files = module_files(src)
    graph = {}
    for module, path in files.items():
        text = strip(open(path, encoding="utf-8").read())
        # A file's unit tests (at its end, by the house style) use what they test from above; they are not the module.
        test_at = text.find("#[cfg(test)]\nmod tests")
        if test_at >= 0:
            text = text[:test_at]
        # Re-exports are the module's interface.
        text = re.sub(r"\bpub(?:\([a-z]+\))?\s+use\s[^;]*;", "", text)
        # Paths that start at a child module (`bank::Segment`) are `self::` paths.
        children = {k[-1] for k in files if len(k) == len(module) + 1 and k[: len(module)] == module}
        for child in children:
            text = re.sub(r"(?<![:\w])" + child + r"::", "self::" + child + "::", text)
        # `mod x { ... }` blocks inside a file (tests) count as the file itself.
        paths = []
        for m in USE_GROUP.finditer(text):
            base = m.group(2)
            for item in re.split(r",", m.group(3)):
                item = item.strip().split(" as ")[0].strip()
                if item and item != "self":
                    paths.append((m.group(1), base + "::" + item.split("::")[0].strip("{} ")))
                elif item == "self":
                    paths.append((m.group(1), base))
        paths += [(m.group(1), m.group(2)) for m in PATH.finditer(text)]
        targets = set()
        for head, rest in paths:
            parts = [p for p in rest.split("::") if p]
            if head == "crate":
                base = []
            elif head == "super":
                base = list(module[:-1])
                while parts and parts[0] == "super":
                    parts.pop(0)
                    base = base[:-1]
            else:
                base = list(module)
            # The longest prefix that is a module file.
            candidate = None
            for n in range(len(parts), -1, -1):
                key = tuple(base + parts[:n])
                if key in files:
                    candidate = key
                    break
            if candidate is not None and candidate != module and candidate != ():
                targets.add(candidate)
        graph[module] = targets
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    crates = sys.argv[1:] or sorted(
        os.path.join(ROOT, d) for d in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, d, "src"))
    )
    failed = False
    for crate in crates:
        for comp in cycles(edges(crate)):
            failed = True
            names = ", ".join("::".join(m) or "<root>" for m in sorted(comp))
            print(f"{os.path.basename(crate)}: import cycle between {names}")
    if failed:
        sys.exit(1)
    print("no import cycles between files")


if __name__ == "__main__":
    main()
