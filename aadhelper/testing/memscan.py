"""Count the copies of secret values in a running process's memory, as root (or the kernel's ptrace check) allows.

What an attacker who can read the memory of the daemon or its token fetcher (root, a core dump, swap) would find:
every readable mapping listed in ``/proc/PID/maps`` is read through ``/proc/PID/mem`` and searched for each value.
Freed memory counts too: Python does not clear what it frees, so a token whose objects are gone is still found
until the allocator hands the memory out again. Linux only.

The daemon and fetcher are not dumpable (:func:`aadhelper.process_setup.harden_process`), so reading them needs
``CAP_SYS_PTRACE`` (root); :func:`readable` says whether this process may.

Used by ``tests/test_secret_memory.py``; from a shell (as root), with the values one per line on stdin (never in
argv, where ``ps`` would show them)::

    python -m aadhelper.testing.memscan PID [PID ...] < values.txt
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

#: Bytes read from /proc/PID/mem at a time: a heap of tens of MB is read in a few calls, never held whole.
_BLOCK = 8 * 1024 * 1024
#: Mappings never worth reading: the kernel's vsyscall page refuses reads, and vvar holds clock data only.
_SKIPPED = ("[vvar]", "[vvar_vclock]", "[vsyscall]")


@dataclass(frozen=True)
class Region:
    """One readable mapping of a process."""

    start: int
    end: int
    name: str


def regions(pid: int) -> list[Region]:
    """The readable mappings of ``pid`` (anonymous, heap, stacks and file-backed alike)."""
    found = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if not fields[1].startswith("r"):
                continue
            name = fields[5].strip() if len(fields) > 5 else ""
            if name in _SKIPPED:
                continue
            start, end = (int(part, 16) for part in fields[0].split("-"))
            found.append(Region(start, end, name))
    return found


def _blocks(mem: int, region: Region, overlap: int) -> Iterator[tuple[int, bytes]]:
    """(address, bytes) of ``region`` in blocks that overlap by ``overlap`` bytes, so no match spans a seam unseen."""
    address = region.start
    while address < region.end:
        size = min(_BLOCK + overlap, region.end - address)
        try:
            data = os.pread(mem, size, address)
        except OSError:  # a mapping that went away or cannot be read (e.g. device memory): nothing to find there
            return
        if not data:
            return
        yield address, data
        if address + size >= region.end:
            return
        address += _BLOCK


def count(pid: int, values: Iterable[bytes]) -> dict[bytes, int]:
    """How many times each of ``values`` occurs in the readable memory of ``pid``."""
    wanted = {value for value in values if value}
    counts = dict.fromkeys(wanted, 0)
    if not wanted:
        return counts
    overlap = max(map(len, wanted)) - 1
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for region in regions(pid):
            for address, data in _blocks(mem, region, overlap):
                # Matches that start in the overlap are counted by the next block.
                limit = min(len(data), _BLOCK) if address + len(data) < region.end else len(data)
                for value in wanted:
                    position = data.find(value)
                    while 0 <= position < limit:
                        counts[value] += 1
                        position = data.find(value, position + 1)
    finally:
        os.close(mem)
    return counts


def locate(pid: int, value: bytes, context: int = 48) -> list[tuple[Region, int, bytes]]:
    """Where ``value`` occurs in ``pid``: (mapping, address, the bytes around it), to tell which code left a copy
    (a form body ``client_secret=...&scope``, a JSON reply, a D-Bus message) when a census finds too many."""
    found = []
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for region in regions(pid):
            for address, data in _blocks(mem, region, len(value) - 1):
                limit = min(len(data), _BLOCK) if address + len(data) < region.end else len(data)
                position = data.find(value)
                while 0 <= position < limit:
                    around = data[max(0, position - context):position + len(value) + context]
                    found.append((region, address + position, around))
                    position = data.find(value, position + 1)
    finally:
        os.close(mem)
    return found


def total(counts: Mapping[bytes, int], values: Iterable[bytes]) -> int:
    """The number of copies of ``values`` together."""
    return sum(counts.get(value, 0) for value in values)


def readable(pid: int) -> bool:
    """True when this process may read the memory of ``pid``."""
    try:
        os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or not all(arg.isdigit() for arg in args):
        print("usage: python -m aadhelper.testing.memscan PID [PID ...] < values (one a line)", file=sys.stderr)
        return 2
    values = [line.rstrip("\n").encode() for line in sys.stdin if line.rstrip("\n")]
    for pid in map(int, args):
        counts = count(pid, values)
        for index, value in enumerate(values):
            # Never print the value itself: it is a secret.
            print(f"pid {pid} value {index + 1} ({len(value)} bytes): {counts.get(value, 0)} copies")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
