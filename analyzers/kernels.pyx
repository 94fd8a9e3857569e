# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled per-rank kernels: sequential recurrences numpy cannot fuse (DESIGN.md, "Compiled
kernels"). Each releases the GIL; its numpy twin lives beside its caller and is the oracle the
tests check it against on random inputs.
"""

from libc.math cimport INFINITY


def replay_merges(double[:, ::1] rel, const double[:, ::1] base, const long long[::1] rq,
                  const long long[::1] slot_start, const long long[::1] merges,
                  const double[::1] low, const double[::1] ext,
                  const long long[::1] need_of_slot, const long long[::1] sp,
                  const long long[::1] rq2, const double[:, ::1] base2,
                  double[:, ::1] arr_slot) -> None:
    """The replay's merges in release order (:func:`sohuprof.analyzers.diagnosis.replay._compressed`).

    For merge ``i`` (instance ``merges[i]``) and each of its member slots ``j`` in
    ``slot_start[i]:slot_start[i + 1]``, per scenario ``s``::

        v = rel[rq[j], s] + base[j, s]
        if need_of_slot[j] >= 0 (an asynchronous predecessor; k = need_of_slot[j]):
            prior = arr_slot[sp[k], s] if sp[k] >= 0 else rel[rq2[k], s]
            v = max(v, prior + base2[k, s])
        arr_slot[j, s] = v
        rel[merges[i], s] = max(max_j v + low[merges[i]], ext[merges[i]])

    which is the numpy loop's batch step, one merge at a time (release order is topological).
    """
    cdef Py_ssize_t M = merges.shape[0]
    cdef Py_ssize_t S = rel.shape[1]
    cdef Py_ssize_t i, j, s, k, c
    cdef double v, prior, top
    with nogil:
        for i in range(M):
            c = merges[i]
            for s in range(S):
                top = -INFINITY
                for j in range(slot_start[i], slot_start[i + 1]):
                    v = rel[rq[j], s] + base[j, s]
                    k = need_of_slot[j]
                    if k >= 0:
                        if sp[k] >= 0:
                            prior = arr_slot[sp[k], s]
                        else:
                            prior = rel[rq2[k], s]
                        prior = prior + base2[k, s]
                        if prior > v:
                            v = prior
                    arr_slot[j, s] = v
                    if v > top:
                        top = v
                top = top + low[c]
                if ext[c] > top:
                    top = ext[c]
                rel[c, s] = top
