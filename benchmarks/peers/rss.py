"""Peak resident memory of this process, for the runners and the calmdown worker.

``getrusage(RUSAGE_SELF).ru_maxrss`` is no use in a subprocess: Linux carries the largest
resident size over ``exec`` from the process that started it, so a runner launched by a
script that holds a movie in memory reports at least that script's peak. ``VmHWM`` in
``/proc/self/status`` belongs to this process's own memory map, which ``exec`` replaces.
"""

import resource


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (``VmHWM``; else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
