#!/usr/bin/env python3
"""Print the functions of one program that callgrind saw run, one mangled
name per line, as the linker's symbol-ordering file for ddmd (see
ddmd/build.rs and scripts/text-order.sh), in three groups:

1. what an idle daemon runs to answer admin calls (--first), hottest
   first, so that the pages one call brings back are few;
2. the rest of what running daemons ran (--then), hottest first;
3. what ran while the daemon started (--startup) and neither answering
   calls nor much beyond startup in the running daemons (at most three
   times the startup's count: three daemons started): the daemon drops
   those pages once started, so they go last.

Hotness is the instructions executed in the function itself, summed over
the group's profiles, which must come from
`valgrind --tool=callgrind --demangle=no`.

Usage: text-order.py PROGRAM --first P... --then P... --startup P...
"""
import collections
import re
import sys

# callgrind names a function's recursive activations NAME'2, NAME'3, ...
RECURSION = re.compile(r"'\d+$")
NAMED = re.compile(r"^(c?ob|c?fn|c?fl|fi|fe)=(?:\((\d+)\))?\s*(.*)$")
POSITION = re.compile(r"^([+-]?\d+|\*)$")


def self_costs(path, cost):
    """Add each (object, function)'s own instruction count in one
    callgrind profile (name compression and call records understood)."""
    objects, functions = {}, {}
    ob = fn = None
    after_call = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if after_call:
                # The line after `calls=` is the callee's inclusive cost.
                after_call = False
                continue
            m = NAMED.match(line)
            if m:
                kind, ident, name = m.groups()
                table = (objects if kind.endswith("ob")
                         else functions if kind.endswith("fn") else None)
                if table is None:
                    continue
                if ident and name:
                    table[ident] = name
                value = table.get(ident, name) if ident else name
                if kind == "ob":
                    ob = value
                elif kind == "fn":
                    fn = value
                    cost[(ob, fn)] += 0
                continue
            if line.startswith(("events:", "positions:")):
                key, _, value = line.partition(":")
                want = "Ir" if key == "events" else "line"
                if value.split()[:1] != [want]:
                    sys.exit(f"text-order: {path}: {key} {value.strip()!r}, "
                             f"expected {want} first (callgrind's default)")
                continue
            if line.startswith("calls="):
                after_call = True
                continue
            parts = line.split()
            if (fn is not None and len(parts) >= 2 and parts[1].isdigit()
                    and POSITION.match(parts[0])):
                cost[(ob, fn)] += int(parts[1])


def costs(program, profiles):
    """The own instruction counts of the program's functions that ran in
    `profiles`, by mangled name (addresses callgrind could not name, and
    its pseudo-functions, left out)."""
    cost = collections.Counter()
    for p in profiles:
        self_costs(p, cost)
    name = program.split("/")[-1]
    ours = collections.Counter()
    for (ob, fn), c in cost.items():
        if not ob or ob.split("/")[-1] != name:
            continue
        fn = RECURSION.sub("", fn)
        if fn.startswith("0x") or "(" in fn or " " in fn:
            continue
        ours[fn] += c
    return ours


def ranked(cost):
    """Names by cost, highest first."""
    return [fn for fn, _ in sorted(cost.items(), key=lambda kv: (-kv[1], kv[0]))]


def main():
    args = sys.argv[1:]
    if len(args) < 2 or args[1] != "--first":
        sys.exit(__doc__)
    program, groups, current = args[0], {}, None
    for a in args[1:]:
        if a in ("--first", "--then", "--startup"):
            current = groups.setdefault(a, [])
        else:
            current.append(a)
    first = costs(program, groups.get("--first", []))
    then = costs(program, groups.get("--then", []))
    startup = {
        fn for fn, c in costs(program, groups.get("--startup", [])).items()
        if fn not in first and then.get(fn, 0) <= 3 * c
    }
    seen = set()
    out = []
    for fn in ranked(first) + [f for f in ranked(then) if f not in startup] \
            + sorted(startup):
        if fn not in seen:
            seen.add(fn)
            out.append(fn)
    print("\n".join(out))
    print(f"text-order: {len(out)} functions of {program} ran "
          f"({len(first)} answering admin calls, {len(startup)} only at "
          f"startup)", file=sys.stderr)


if __name__ == "__main__":
    main()
