"""Reading the optimized HLO text of a compiled program: its instructions (types, opcodes, the
jax code they came from), the bytes each reads and writes, its loops and its Pallas kernels, and
what a fusion computes.

The bench uses it to qualify XLA's cost analysis (loops counted once, kernels not at all);
`scripts/profile_step.py` to name the model part of each profiled kernel; `scripts/hlo_traffic.py`
to put each kernel's bytes next to its time.
"""

from __future__ import annotations

import math
import re

# One instruction: `%name = TYPE opcode(operands...), attributes`; TYPE may be a tuple.
DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S.*?)\s+([\w\-]+)\(")
ARRAY = re.compile(r"\b(pred|[a-z]+\d+[a-z0-9]*)\[([\d,]*)\]")
OP_NAME = re.compile(r'op_name="([^"]*)"')
CUSTOM_TARGET = re.compile(r'custom_call_target="([^"]*)"')
FUSION_KIND = re.compile(r"kind=(k\w+)")


def definitions(hlo_text: str) -> list[tuple[str, str, str, str]]:
    """(name, type, opcode, line) of every instruction of every computation, in text order."""
    return [(m.group(1), m.group(2), m.group(3), line) for line in hlo_text.splitlines() if (m := DEFINITION.match(line))]


def instructions(hlo_text: str) -> dict[str, dict]:
    """Each instruction: its opcode, fusion kind or custom-call target, and the op_name of its
    metadata (the jax/Flax call path it was traced from)."""
    ops = {}
    for name, _, opcode, line in definitions(hlo_text):
        op_name, target, kind = OP_NAME.search(line), CUSTOM_TARGET.search(line), FUSION_KIND.search(line)
        detail = target.group(1) if target else (kind.group(1) if kind and opcode == "fusion" else "")
        ops[name] = {"opcode": opcode, "detail": detail, "op_name": op_name.group(1) if op_name else ""}
    return ops


def has_loops(hlo_text: str) -> bool:
    """Whether compiled HLO holds a while loop. XLA's cost analysis counts a loop body once, not
    once per trip, so the FLOPs and bytes of such a program are an undercount."""
    return re.search(r"\bwhile\(", hlo_text) is not None


def loops(hlo_text: str) -> list[dict]:
    """Each while loop of compiled HLO: the jax operation it came from (metadata op_name, cut to
    its last 80 characters) and XLA's known trip count where the backend config states one.
    Says where an undercount comes from: on CPU, for instance, dropout's threefry RNG is a loop."""
    found = []
    for line in hlo_text.splitlines():
        if not re.search(r"\bwhile\(", line):
            continue
        op = OP_NAME.search(line)
        trips = re.search(r'known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"', line)
        found.append({"op": op.group(1)[-80:] if op else None, "trips": int(trips.group(1)) if trips else None})
    return found


def kernels(hlo_text: str) -> list[str]:
    """The Pallas/Triton kernels a compiled HLO program calls (their names where the call states
    one). XLA's cost analysis does not see inside them, so a program with kernels undercounts
    the FLOPs and bytes by whatever the kernels do."""
    kernels = []
    for line in hlo_text.splitlines():
        if "xla.gpu.triton" not in line:
            continue
        # the call's own name key, not metadata's op_name
        name = re.search(r'(?<![A-Za-z_])name\\?"?\s*[:=]\s*\\?"([A-Za-z0-9_.]+)', line)
        kernels.append(name.group(1) if name else "?")
    return kernels


def type_bytes(hlo_type: str) -> int:
    """Bytes of an HLO type: `f32[4,8]{1,0}` -> 128; a tuple's are summed; pred counts one byte."""
    total = 0
    for dtype, dims in ARRAY.findall(hlo_type):
        bits = 8 if dtype == "pred" else int(re.match(r"[a-z]+(\d+)", dtype).group(1))
        total += math.prod(int(d) for d in dims.split(",") if d) * max(bits // 8, 1)
    return total


def _operand_names(line: str) -> list[str]:
    """The %names inside the opcode's parentheses (not those of attributes or metadata)."""
    operands = line[DEFINITION.match(line).end() :]
    depth = 1
    for end, ch in enumerate(operands):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            operands = operands[:end]
            break
    return re.findall(r"%([\w.\-]+)", operands)


def instruction_io(hlo_text: str) -> dict[str, tuple[int, int]]:
    """Per instruction (every computation's): (bytes of its operands, bytes of its result), from
    the types the text states. Read once and written once: a lower bound on what the instruction's
    kernel moves (one that re-reads an input or spills moves more). A custom call's s8 workspace
    at the end of its result tuple is not counted."""
    return _io(definitions(hlo_text))


def _io(defs: list[tuple[str, str, str, str]]) -> dict[str, tuple[int, int]]:
    types = {name: hlo_type for name, hlo_type, _, _ in defs}
    io = {}
    for name, hlo_type, opcode, line in defs:
        result = hlo_type
        if opcode == "custom-call":  # a library call's trailing s8[...] is its workspace
            result = re.sub(r",\s*s8\[[\d,]*\](\{[^}]*\})?\)$", ")", hlo_type)
        read = sum(type_bytes(types.get(n, "")) for n in _operand_names(line))
        io[name] = (read, type_bytes(result))
    return io


def kernel_io_bytes(hlo_text: str) -> int:
    """The bytes the Pallas/Triton kernels of a compiled program read and write at the least: each
    call's operands read once and its results written once. XLA's cost analysis counts nothing for
    them; adding this makes a layer's roofline a lower bound again rather than a guess, though a
    kernel that reads an input twice or spills moves more."""
    defs = definitions(hlo_text)
    io = _io(defs)
    return sum(sum(io[name]) for name, _, opcode, line in defs if opcode == "custom-call" and "xla.gpu.triton" in line)


def entry_order(hlo_text: str, op_name_part: str) -> list[str]:
    """The ENTRY computation's instructions, in program order, whose metadata op_name holds
    op_name_part (e.g. "block_2/" for one block, forward and backward)."""
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    entry = entry[: entry.index("\n}")]
    return [name for name, op in instructions(entry).items() if op_name_part in op["op_name"]]


def called_computation(hlo_text: str, instruction: str) -> str:
    """The computation an instruction calls (a fusion's body), without metadata and backend
    configs; the instruction's own line when it calls none. KeyError if there is no such
    instruction."""
    line = next((l for name, _, _, l in definitions(hlo_text) if name == instruction), None)
    if line is None:
        raise KeyError(f"no instruction %{instruction} in the HLO")
    called = re.search(r"calls=%([\w.\-]+)", line)
    if called is None:
        return _without_attributes(line)
    start = re.search(rf"^%{re.escape(called.group(1))} \(", hlo_text, re.M)
    body = hlo_text[start.start() : hlo_text.index("\n}", start.start()) + 2]
    return "\n".join(_without_attributes(l) for l in body.splitlines())


def _without_attributes(line: str) -> str:
    line = re.sub(r", metadata=\{[^}]*\}", "", line)
    return re.sub(r", backend_config=.*$", "", line)
