"""Cutting a graph's nodes into maximal cycle-free runs of one colour (provider, compiled group, ...).

The core groups each provider's nodes into partitions with it, and a compiling provider that wants to know
the groups it will be handed (OpenVINO sizes and checks them in ``get_capability``) calls the same function,
so both cut the graph the same way.
"""
from __future__ import annotations

import heapq
from typing import Callable, Hashable, Iterable, Sequence

from engineroom.plugin_sdk.kernel import NodeView


def cycle_free_runs(nodes: Sequence[NodeView], color: Callable[[int], Hashable],
                    reads: Callable[[NodeView], Iterable[str]] | None = None) -> list[tuple[Hashable, list[int]]]:
    """``nodes`` (any order; keyed by ``NodeView.index``) cut into runs of one colour, as ``(colour, [index,
    ...])`` in a topological order (Kahn waves): it keeps taking ready nodes of the current run's colour while
    there are any, and otherwise starts a run with the ready node of lowest index. So every run is a
    contiguous stretch of one topological order, and no path leaves a run and re-enters it.

    ``color(index)`` gives a node's colour; ``reads(node)`` the values it reads (its inputs by default; a node
    with subgraphs also reads the enclosing-scope values they use). Raises ValueError if the nodes form a
    cycle."""
    by_index = {v.index: v for v in nodes}
    producer = {o: v.index for v in nodes for o in v.output_names if o}
    succ: dict[int, set[int]] = {i: set() for i in by_index}
    indeg = dict.fromkeys(by_index, 0)
    for v in nodes:
        names = v.input_names if reads is None else reads(v)
        preds = {producer[x] for x in names if x in producer}
        preds.discard(v.index)
        indeg[v.index] = len(preds)
        for p in preds:
            succ[p].add(v.index)
    ready: dict[Hashable, list[int]] = {}
    for i in sorted(by_index):
        if indeg[i] == 0:
            heapq.heappush(ready.setdefault(color(i), []), i)
    runs: list[tuple[Hashable, list[int]]] = []
    cur = None
    while True:
        if cur is None or not ready.get(cur):
            heads = [(h[0], c) for c, h in ready.items() if h]
            if not heads:
                break
            cur = min(heads, key=lambda hc: hc[0])[1]      # indices are unique: colours are never compared
            runs.append((cur, []))
        i = heapq.heappop(ready[cur])
        runs[-1][1].append(i)
        for s in succ[i]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(ready.setdefault(color(s), []), s)
    if sum(len(r) for _, r in runs) != len(by_index):
        raise ValueError("the graph has a cycle")
    return runs
