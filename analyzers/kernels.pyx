# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled per-rank kernels: sequential recurrences numpy cannot fuse (DESIGN.md, "Compiled
kernels"). Each releases the GIL; its numpy twin stays in the caller's module as the oracle the
tests check it against on random inputs.
"""

from libc.math cimport INFINITY


def replay_ordered(const long long[::1] offsets, const long long[::1] members, const unsigned char[::1] first,
                   const long long[::1] inst, const double[::1] el, const double[::1] ea,
                   const double[::1] transfer, const double[:, ::1] tscale, const double[:, ::1] delta,
                   const double[::1] arrive0, const double[::1] low, const double[::1] ext,
                   const unsigned char[::1] counts_wait, double[:, ::1] arr, double[:, ::1] rel,
                   double[::1] wait) -> None:
    """Replay every instance in release order (a topological order of the graph), per scenario
    ``s``: each member ``a`` of instance ``c`` arrives at::

        first[a]:  arrive0[a] + delta[a, s]
        else:      max(rel[inst[a-1], s] + transfer[a-1] * tscale[inst[a-1], s] + el[a],
                       arr[a-1, s] + ea[a]) + delta[a, s]

    and ``rel[c, s] = max(max over members of arr + low[c], ext[c])``; ``wait[s]`` sums
    ``rel - arr`` over the members with ``counts_wait``. The numpy version is
    :func:`sohuprof.analyzers.diagnosis.replay._compressed` (lockstep chains by pointer jumping,
    then the merges), which gives the same times.
    """
    cdef Py_ssize_t I = offsets.shape[0] - 1
    cdef Py_ssize_t S = rel.shape[1]
    cdef Py_ssize_t c, j, a, p, s
    cdef double x, top, y
    with nogil:
        for c in range(I):
            for s in range(S):
                top = -INFINITY
                for j in range(offsets[c], offsets[c + 1]):
                    a = members[j]
                    if first[a]:
                        x = arrive0[a]
                    else:
                        p = a - 1
                        x = rel[inst[p], s] + transfer[p] * tscale[inst[p], s] + el[a]
                        if ea[a] > -INFINITY:
                            y = arr[p, s] + ea[a]
                            if y > x:
                                x = y
                    x = x + delta[a, s]
                    arr[a, s] = x
                    if x > top:
                        top = x
                top = top + low[c]
                if ext[c] > top:
                    top = ext[c]
                rel[c, s] = top
                for j in range(offsets[c], offsets[c + 1]):
                    a = members[j]
                    if counts_wait[a]:
                        wait[s] += top - arr[a, s]
