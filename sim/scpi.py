"""A small SCPI parser and dispatcher: the instrument's side of the wire.

Written from the SCPI 1999 / IEEE 488.2 conventions (and the vendor notes in
``reference/scpi.md``), not from any client driver, so that a formatting bug in a driver is seen
as the instrument would see it.

What it implements

* Program headers with long and short forms (``SOURce:FREQuency`` accepts ``SOUR:FREQ`` and
  ``SOURCE:FREQUENCY``, case-insensitive; nothing in between), optional nodes ``[:CW]``,
  alternative spellings ``BANDwidth|BWIDth`` and numeric suffixes declared with ``<n>``
  (``TRACe<n>``, ``MARKer<n>``; default 1).
* Several message units per line separated by ``;`` with the header-path rule: a header that
  does not start with ``:`` continues the path of the previous command (everything but its last
  node); common commands (``*XXX``) do not change the path; each new line starts at the root.
* Parameters: decimal numbers with unit suffixes (HZ KHZ MHZ GHZ, DBM, DB, V MV UV, A MA UA,
  S MS US NS), ``MINimum``/``MAXimum``/``DEFault`` where the command gives them, booleans
  ``ON|OFF|1|0``, enumerated character data by long or short form.
* IEEE 488.2 common commands, a FIFO error queue (30 entries, ``-350,"Queue overflow"``),
  the Standard Event Status Register (OPC 1, QYE 4, DDE 8, EXE 16, CME 32) and the status byte
  (EAV 4, MAV 16, ESB 32, MSS 64).
* Errors: ``-113 Undefined header`` (the rest of the line is discarded after any command error
  -1xx, as the parser has lost its place); ``-222 Data out of range`` (the setting keeps its
  previous value); ``-224 Illegal parameter value``; ``-410 Query INTERRUPTED`` (a new message
  while a reply is unread) and ``-420 Query UNTERMINATED`` (a read with nothing to read) on the
  in-process message exchange (``write``/``read``). Over a raw socket the reply is sent at once,
  so -410/-420 cannot be observed there; real LAN sockets behave alike.

numpy is not needed here; standard library only.
"""
from __future__ import annotations

import re
import threading

from sim.error_messages import MESSAGES

# ----------------------------------------------------------------------------- errors

ESR_OPC, ESR_QYE, ESR_DDE, ESR_EXE, ESR_CME, ESR_PON = 1, 4, 8, 16, 32, 128
QUEUE_SIZE = 30


class SCPIError(Exception):
    """Raised by a handler: the dispatcher queues it and sets the matching ESR bit."""

    def __init__(self, code: int, message: str | None = None):
        self.code = int(code)
        self.message = message if message is not None else MESSAGES.get(self.code, "Error")
        super().__init__(f"{self.code},{self.message}")


def esr_bit(code: int) -> int:
    if -199 <= code <= -100:
        return ESR_CME
    if -299 <= code <= -200:
        return ESR_EXE
    if -499 <= code <= -400:
        return ESR_QYE
    return ESR_DDE  # -3xx and device-specific (positive) errors


# ----------------------------------------------------------------------------- parameters

_UNITS = {
    "HZ": {"HZ": 1.0, "KHZ": 1e3, "MHZ": 1e6, "GHZ": 1e9},
    "DBM": {"DBM": 1.0},
    "DB": {"DB": 1.0},
    "V": {"V": 1.0, "MV": 1e-3, "UV": 1e-6, "KV": 1e3},
    "A": {"A": 1.0, "MA": 1e-3, "UA": 1e-6, "NA": 1e-9},
    "S": {"S": 1.0, "MS": 1e-3, "US": 1e-6, "NS": 1e-9},
    None: {},
}
_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")
_NUMERIC_START = frozenset("+-.0123456789")


def one(params) -> str:
    """The single parameter of a command (-109 if missing, -108 if more than one)."""
    if not params:
        raise SCPIError(-109)
    if len(params) > 1:
        raise SCPIError(-108)
    return params[0]


def none(params) -> None:
    if params:
        raise SCPIError(-108)


def number(p: str, unit: str | None = None, lo: float | None = None, hi: float | None = None,
           default: float | None = None, integer: bool = False) -> float:
    """Decimal numeric program data with an optional unit suffix, checked against [lo, hi]."""
    p = p.strip()
    if p and p[0] in _NUMERIC_START:
        try:
            value = float(p)
        except ValueError:
            m = _NUMBER.match(p)
            if m is None:
                raise SCPIError(-104) from None
            value = float(m.group(1))
            suffix = m.group(2).upper()
            if suffix:
                scale = _UNITS[unit].get(suffix)
                if scale is None:
                    raise SCPIError(-131)
                value *= scale
    else:
        word = p.upper()
        if word in ("MAX", "MAXIMUM") and hi is not None:
            value = hi
        elif word in ("MIN", "MINIMUM") and lo is not None:
            value = lo
        elif word in ("DEF", "DEFAULT") and default is not None:
            value = default
        elif not word:
            raise SCPIError(-109)
        else:
            raise SCPIError(-104 if word.isalpha() and word not in ("MAX", "MIN", "DEF") else -224)
    if value != value or value in (float("inf"), float("-inf")):
        raise SCPIError(-222)
    if integer:
        value = int(round(value))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SCPIError(-222)
    return value


def boolean(p: str) -> bool:
    w = p.strip().upper()
    if w in ("ON", "1"):
        return True
    if w in ("OFF", "0"):
        return False
    try:
        return round(float(w)) != 0  # SCPI: numeric booleans are rounded, non-zero is ON
    except ValueError:
        raise SCPIError(-224) from None


def split_mnemonic(m: str) -> tuple[str, str]:
    """``FREQuency`` -> (``FREQ``, ``FREQUENCY``): the short form is the upper-case part."""
    short = "".join(c for c in m if c.isupper() or c.isdigit() or c in "*?")
    return short, m.upper()


class Choices:
    """Enumerated character data: accepts each value's long or short form, answers the short."""

    def __init__(self, *values: str):
        self.map: dict[str, str] = {}
        for v in values:
            short, long = split_mnemonic(v)
            self.map[short] = short
            self.map[long] = short

    def __call__(self, p: str) -> str:
        try:
            return self.map[p.strip().upper()]
        except KeyError:
            raise SCPIError(-224) from None


# ----------------------------------------------------------------------------- header tree


class _Node:
    __slots__ = ("children", "set", "query")

    def __init__(self):
        self.children: dict[str, tuple[_Node, str, bool]] = {}
        self.set = None
        self.query = None


_PATTERN_TOKEN = re.compile(r"\[:?([^\]]+)\]|:?([^:\[\]]+)")


def _expand(pattern: str):
    """All node sequences of a header pattern: each node (forms, long name, takes suffix)."""
    nodes = []
    for opt, req in _PATTERN_TOKEN.findall(pattern):
        text = opt or req
        suffix = text.endswith("<n>")
        if suffix:
            text = text[:-3]
        forms = set()
        long_name = None
        for alt in text.split("|"):
            short, long = split_mnemonic(alt)
            forms.update((short, long))
            long_name = long_name or long
        nodes.append((frozenset(forms), long_name, suffix, bool(opt)))
    seqs = [[]]
    for node in nodes:
        if node[3]:
            seqs = [s + [node] for s in seqs] + seqs
        else:
            seqs = [s + [node] for s in seqs]
    return seqs


# ----------------------------------------------------------------------------- faults


# Faults live in sim.faults (re-exported here, where tests have always found them)
from sim.faults import DISCONNECT, Faults, handle_with_faults  # noqa: E402


# ----------------------------------------------------------------------------- device


class SCPIDevice:
    """Base of the simulated SCPI instruments: parser, error queue, status, common commands.

    Subclasses register their subsystem commands with :meth:`command` (once per class, the tree
    is cached on the class) and implement ``reset()``; they may override ``idn``, ``options`` and
    ``pending_until`` (virtual time at which the pending operation completes).
    """

    idn = "SIM,SCPI device,SIM0000,sim"
    options = "0"
    plus_sign_errors = False  # Keysight answers "+0,..." and "+nnn,..."
    lock: threading.Lock | None = None  # the rig's lock, shared by its instruments
    clock = None

    _tree: _Node | None = None

    def __init__(self):
        cls = type(self)
        if cls.__dict__.get("_tree") is None:
            cls._tree = _Node()
            cls._setup_commands(_Registrar(cls._tree))
        self._cache: dict[str, tuple] = {}
        self._plans: dict[str, tuple] = {}  # program message -> its parsed units (execute)
        self.faults = Faults()
        self.errors: list[tuple[int, str]] = []
        self.esr = 0
        self.ese = 0
        self.sre = 0
        self.pending_until = 0.0
        self._out: bytes | None = None
        self._common = {
            "*IDN?": self._idn_q, "*RST": self._rst, "*CLS": self._cls, "*OPC?": self._opc_q,
            "*OPC": self._opc, "*WAI": self._wai, "*ESR?": self._esr_q, "*ESE": self._ese,
            "*ESE?": self._ese_q, "*STB?": self._stb_q, "*SRE": self._sre, "*SRE?": self._sre_q,
            "*OPT?": self._opt_q, "*TST?": self._tst_q, "*TRG": self._trg,
        }
        self.reset()

    # --- to be provided by subclasses
    @classmethod
    def _setup_commands(cls, r: "_Registrar") -> None:
        r.command("SYSTem:ERRor[:NEXT]", query=cls._syst_err_q)
        r.command("SYSTem:ERRor:COUNt", query=cls._syst_err_count_q)
        r.command("SYSTem:ERRor:ALL", query=cls._syst_err_all_q)
        r.command("STATus:PRESet", set=lambda self, p, s: None)

    def reset(self) -> None:
        """*RST: the vendor's reset state."""

    def _trg(self, params):
        none(params)

    # --- error queue
    def push_error(self, code: int, message: str | None = None) -> None:
        if message is None:
            message = MESSAGES.get(code, "Error")
        self.esr |= esr_bit(code)
        if len(self.errors) >= QUEUE_SIZE:
            self.errors[-1] = (-350, MESSAGES[-350])
        else:
            self.errors.append((code, message))

    def _format_error(self, code: int, message: str) -> str:
        c = f"{code:+d}" if self.plus_sign_errors else f"{code:d}"
        return f'{c},"{message}"'

    def _syst_err_q(self, params, sfx):
        none(params)
        if self.errors:
            return self._format_error(*self.errors.pop(0))
        return self._format_error(0, "No error")

    def _syst_err_count_q(self, params, sfx):
        none(params)
        return str(len(self.errors))

    def _syst_err_all_q(self, params, sfx):
        none(params)
        if not self.errors:
            return self._format_error(0, "No error")
        text = ",".join(self._format_error(*e) for e in self.errors)
        self.errors.clear()
        return text

    # --- common commands
    def _idn_q(self, params):
        none(params)
        return self.idn

    def _opt_q(self, params):
        none(params)
        return self.options

    def _tst_q(self, params):
        none(params)
        return "0"

    def _rst(self, params):
        none(params)
        self.pending_until = min(self.pending_until, self.clock.now()) if self.clock else 0.0
        self.reset()

    def _cls(self, params):
        none(params)
        self.errors.clear()
        self.esr = 0

    def complete(self) -> None:
        """Wait (in the rig's time) for the pending operation."""
        if self.pending_until > self.clock.now():
            self.clock.advance_to(self.pending_until, release=self.lock)

    def _opc_q(self, params):
        none(params)
        self.complete()
        return "1"

    def _opc(self, params):
        none(params)
        self.complete()  # virtual time: the operation is complete as soon as anybody looks
        self.esr |= ESR_OPC

    def _wai(self, params):
        none(params)
        self.complete()

    def _esr_q(self, params):
        none(params)
        v, self.esr = self.esr, 0
        return str(v)

    def _ese(self, params):
        self.ese = int(number(one(params), lo=0, hi=255, integer=True))

    def _ese_q(self, params):
        none(params)
        return str(self.ese)

    def _sre(self, params):
        self.sre = int(number(one(params), lo=0, hi=255, integer=True))

    def _sre_q(self, params):
        none(params)
        return str(self.sre)

    def _stb_q(self, params):
        none(params)
        stb = 0
        if self.errors:
            stb |= 4
        if self._out is not None:
            stb |= 16
        if self.esr & self.ese:
            stb |= 32
        if stb & self.sre & ~64:
            stb |= 64
        return str(stb)

    # --- dispatch
    def _resolve(self, tokens: list[str], query: bool):
        key = ":".join(tokens).upper() + ("?" if query else "")
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        node = self._tree
        sfx = {}
        for tok in tokens:
            t = tok.upper()
            base = t.rstrip("0123456789")
            edge = node.children.get(base) if base else None
            if edge is None:
                edge = node.children.get(t)  # a mnemonic that ends in digits by itself
                if edge is None:
                    raise SCPIError(-113)
                base = t
            child, long_name, takes_suffix = edge
            if len(base) != len(t):
                if not takes_suffix:
                    raise SCPIError(-114)
                sfx[long_name] = int(t[len(base):])
            node = child
        handler = node.query if query else node.set
        if handler is None:
            raise SCPIError(-113)
        hit = (handler, sfx)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = hit
        return hit

    def execute(self, line: str) -> list:
        """Execute one program message; return the response units (str or bytes)."""
        if self.faults.errors:
            for code, msg in self.faults.errors:
                self.push_error(code, msg)
            self.faults.errors.clear()
        plan = self._plans.get(line)
        if plan is not None:
            return self._run_plan(plan)
        responses = []
        path: list[str] = []
        plan = []  # (handler, params, suffixes or None for a common command) of every unit, if all resolve
        units = line.split(";") if ('"' not in line and "'" not in line) else _split_quoted(line, ";")
        for unit in units:
            unit = unit.strip()
            if not unit:
                continue
            parts = unit.split(None, 1)
            header = parts[0]
            if len(parts) > 1:
                rest = parts[1]
                params = [x.strip() for x in (rest.split(",") if ('"' not in rest and "'" not in rest)
                                                else _split_quoted(rest, ","))]
            else:
                params = []
            try:
                if header[0] == "*":
                    h = self._common.get(header.upper())
                    if h is None:
                        plan = None
                        raise SCPIError(-113)
                    if plan is not None:
                        plan.append((h, params, None))
                    r = h(params)
                else:
                    query = header[-1] == "?"
                    hdr = header[:-1] if query else header
                    if hdr[:1] == ":":
                        tokens = hdr[1:].split(":")
                    else:
                        tokens = path + hdr.split(":")
                    if "" in tokens:
                        plan = None
                        raise SCPIError(-102)
                    path = tokens[:-1]
                    try:
                        handler, sfx = self._resolve(tokens, query)
                    except SCPIError:
                        plan = None
                        raise
                    if plan is not None:
                        plan.append((handler, params, sfx))
                    r = handler(self, params, sfx)
            except SCPIError as e:
                self.push_error(e.code, e.message)
                if -199 <= e.code <= -100:
                    plan = None  # the units after this one were never parsed
                    break  # command error: the rest of the message is discarded
                continue
            if r is not None:
                responses.append(r)
        if plan is not None:
            # a message sent again (the sweep, the trace query) is not parsed again
            if len(self._plans) >= 256:
                self._plans.clear()
            self._plans[line] = tuple(plan)
        return responses

    def _run_plan(self, plan) -> list:
        """Execute a message parsed before: the same handlers, parameters and error rules."""
        responses = []
        for handler, params, sfx in plan:
            try:
                r = handler(params) if sfx is None else handler(self, params, sfx)
            except SCPIError as e:
                self.push_error(e.code, e.message)
                if -199 <= e.code <= -100:
                    break  # command error: the rest of the message is discarded
                continue
            if r is not None:
                responses.append(r)
        return responses

    @staticmethod
    def _join(responses: list) -> bytes | None:
        if not responses:
            return None
        if len(responses) == 1:
            r = responses[0]
            return (r if isinstance(r, bytes) else r.encode()) + b"\n"
        return b";".join([r if isinstance(r, bytes) else r.encode() for r in responses]) + b"\n"

    def handle(self, message) -> bytes | None:
        """One program message (without terminator) in, the response message (with ``\\n``) out.

        This is what the socket server calls; faults apply here (``DISCONNECT``: the server
        closes the connection, the message was not executed).
        """
        if isinstance(message, (bytes, bytearray)):
            message = message.decode("latin-1")
        return handle_with_faults(self, message, self._execute_and_join, DISCONNECT)

    def _execute_and_join(self, message: str) -> bytes | None:
        return self._join(self.execute(message))

    # --- in-process message exchange (IEEE 488.2 style: -410 / -420)
    def write(self, message) -> None:
        if self._out is not None:
            self._out = None
            self.push_error(-410)
        out = self.handle(message)
        self._out = None if out is DISCONNECT else out

    def read(self) -> bytes:
        if self._out is None:
            self.push_error(-420)
            return b""
        out, self._out = self._out, None
        return out

    def query(self, message) -> bytes:
        self.write(message)
        return self.read()


class _Registrar:
    def __init__(self, root: _Node):
        self.root = root

    def command(self, pattern: str, set=None, query=None) -> None:
        for seq in _expand(pattern):
            node = self.root
            for forms, long_name, suffix, _opt in seq:
                child = None
                for f in forms:
                    edge = node.children.get(f)
                    if edge is not None:
                        child = edge[0]
                        suffix = suffix or edge[2]
                        break
                if child is None:
                    child = _Node()
                for f in forms:
                    node.children[f] = (child, long_name, suffix)
                node = child
            if set is not None:
                node.set = set
            if query is not None:
                node.query = query


def _split_quoted(text: str, sep: str) -> list[str]:
    out, buf, quote = [], [], None
    for c in text:
        if quote:
            buf.append(c)
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            buf.append(c)
        elif c == sep:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(c)
    out.append("".join(buf))
    return out


def unquote(p: str) -> str:
    p = p.strip()
    if len(p) >= 2 and p[0] == p[-1] and p[0] in "\"'":
        return p[1:-1]
    return p


# ----------------------------------------------------------------------------- number formats


def nr1(v) -> str:
    return str(int(v))


def nr3(v: float, digits: int = 9, exp_digits: int = 2, plus: bool = True) -> str:
    """``+2.070000000E+09`` (``exp_digits=3``: ``+2.070000000E+009`` as Keysight X-series)."""
    s = f"{v:+.{digits}E}" if plus else f"{v:.{digits}E}"
    if exp_digits != 2:
        mant, exp = s.split("E")
        s = f"{mant}E{exp[0]}{exp[1:].zfill(exp_digits)}"
    return s


def block(data: bytes) -> bytes:
    """IEEE 488.2 definite-length arbitrary block ``#<n><len><data>``."""
    n = str(len(data))
    return b"#" + str(len(n)).encode() + n.encode() + data
