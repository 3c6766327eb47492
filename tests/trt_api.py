"""TensorRT's real Python API surface, for the fake TensorRT modules of the tests.

TensorRT cannot run here, but its Python bindings can be imported: `tensorrt_bindings/tensorrt.so` (PyPI's
`tensorrt-cu12-bindings` / `tensorrt-cu13-bindings` wheels, ~1 MB) needs from libnvinfer, libnvonnxparser and
libnvinfer_plugin only nine entry points (createInferBuilder_INTERNAL, getPluginRegistry, ...), and makes no call
into them until an object such as a Builder is created. So a child process loads stand-ins of those three
libraries that export the nine names (returning null), imports the bindings, and writes down every class,
method signature, property and enum member (`dump`). `checked(impl, spec)` then wraps a hand-written fake
TensorRT module (`impl`, the behaviour a test needs) in that surface: an attribute the real TensorRT lacks is an
AttributeError, a call whose arguments match none of the real overloads (count, keyword names, types) a
TypeError, a read-only property cannot be set, enums are the real members and values, and what a method returns
is checked against its declared type. Code that passes against it uses TensorRT's API as that version has it.
The arguments are converted as pybind11 converts them (0 / 1 / None for a bool, a tuple or list for Dims), with
one deliberate exception: an enum member where TensorRT wants an int is refused, since TensorRT would take its
value (pybind11 enums have __index__) where a flag word `1 << int(member)` is almost always meant.

Where the bindings come from: $MQ_TEST_TRT_BINDINGS, directories (os.pathsep-separated) that each hold a
`tensorrt_bindings` package, e.g. `pip install --no-deps --target DIR tensorrt-cu12-bindings==10.3.0`;
`.ci/run` installs TensorRT 10.3's and 11.4's. Without them the fakes run unchecked, as before.

Conventions for the hand-written fake (`impl`): it receives the checked module's enum members (compare their
`.name`), may return a member's name (a str) where TensorRT returns an enum, plain bytes for an IHostMemory, and
tuples for Dims; everything else it returns is wrapped in the checked class its TensorRT method declares.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Optional

import numpy as np

ENV = "MQ_TEST_TRT_BINDINGS"
_PREFIX = re.compile(r"\btensorrt(?:_bindings)?\.tensorrt\.")
_DIMS = re.compile(r"Dims(?:\d*|32|64|HW)")
_LIBS = ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin")
_STUB_C = r"""
#include <stddef.h>
/* The entry points of TensorRT's libraries that its Python bindings import; none is called on import. */
void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return NULL; }
int initLibNvInferPlugins(void *logger, const char *ns) { return 0; }
"""


# -- the dump (child process) ---------------------------------------------------------------------
def _signatures(obj, name: str) -> list[str]:
    """pybind11's signature lines of `obj` ("name(a: T, b: U = d) -> R", one per overload)."""
    doc = getattr(obj, "__doc__", None) or ""
    pat = re.compile(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\) -> (.+)$")
    return [f"({m.group(1)}) -> {m.group(2)}" for ln in doc.splitlines() if (m := pat.match(ln.strip()))]


def _is_enum(t) -> bool:
    return isinstance(t, type) and isinstance(getattr(t, "__members__", None), dict)


def _dump(mod) -> dict:
    import inspect

    out: dict[str, Any] = {"version": mod.__version__, "classes": {}, "enums": {}, "functions": {}, "values": {},
                           "nptype": {}}

    def enum_name(t) -> str:
        return t.__qualname__

    def add_enum(t):
        out["enums"][enum_name(t)] = {k: int(v) for k, v in t.__members__.items()}

    for name in dir(mod):
        if name.startswith("__"):
            continue
        obj = getattr(mod, name)
        if _is_enum(obj):
            add_enum(obj)
            if obj.__qualname__ != name:  # an alias (Logger.Severity is ILogger.Severity)
                out["values"][name] = ["enum", obj.__qualname__]
        elif isinstance(obj, type) and "tensorrt" in obj.__module__:
            spec = {"bases": [b.__name__ for b in obj.__bases__ if "tensorrt" in b.__module__],
                    "init": _signatures(obj.__init__, "__init__"), "methods": {}, "properties": {}, "attrs": {},
                    "buffer": "buffer protocol" in (obj.__doc__ or "")}
            for k, v in vars(obj).items():
                if k.startswith("__") and k not in ("__len__", "__getitem__", "__str__"):
                    continue
                if isinstance(v, property):
                    get = _signatures(v.fget, "") or [""]
                    sets = _signatures(v.fset, "") if v.fset is not None else []
                    spec["properties"][k] = {"get": _PREFIX.sub("", get[0].split(" -> ")[-1]),
                                             "set": None if v.fset is None else _PREFIX.sub("", (
                                                 re.sub(r"^\((?:self|arg0): [^,]+, \w+: (.+)\) -> [\w.]+$", r"\1",
                                                        sets[0])
                                                 if sets else ""))}
                elif _is_enum(v):
                    add_enum(v)
                    spec["attrs"][k] = ["enum", v.__qualname__]
                elif _is_enum(type(v)):
                    spec["attrs"][k] = ["member", enum_name(type(v)), v.name]
                elif callable(v):
                    spec["methods"][k] = _signatures(v, k) or ["(*args, **kwargs) -> object"]
            out["classes"][name] = spec
        elif _is_enum(type(obj)):
            out["values"][name] = ["member", enum_name(type(obj)), obj.name]
        elif inspect.isfunction(obj):  # the Python helpers of tensorrt/__init__.py (nptype, volume)
            params = ", ".join(f"{p}: object" for p in inspect.signature(obj).parameters)
            out["functions"][name] = [f"({params}) -> object"]
        elif callable(obj):
            out["functions"][name] = _signatures(obj, name) or ["(*args, **kwargs) -> object"]
    for k in out["enums"].get("DataType", {}):
        try:
            out["nptype"][k] = np.dtype(mod.nptype(getattr(mod.DataType, k))).name
        except TypeError:  # no numpy equivalent (bf16, fp8, int4)
            pass
    return out


def _child(bindings_dir: str, stub_dir: str) -> None:
    import ctypes

    for lib in sorted(Path(stub_dir).glob("lib*.so.*")):
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)  # the bindings' NEEDED entries resolve by soname to these
    sys.path.insert(0, bindings_dir)
    sys.modules["tensorrt_libs"] = None  # the bindings' __init__ would load a real TensorRT's libraries first
    import tensorrt_bindings

    json.dump(_dump(tensorrt_bindings), sys.stdout)


# -- finding and dumping bindings (test process) --------------------------------------------------
def _version(bindings_dir: Path) -> Optional[str]:
    init = bindings_dir / "tensorrt_bindings" / "__init__.py"
    m = re.search(r'^__version__ = "([^"]+)"', init.read_text(), re.M) if init.is_file() else None
    return m.group(1) if m else None


def dump(bindings_dir: str | Path, work: str | Path) -> dict:
    """The API surface of the `tensorrt_bindings` package in `bindings_dir` (see the module's docstring)."""
    bindings_dir, work = Path(bindings_dir), Path(work)
    version = _version(bindings_dir)
    if version is None:
        raise FileNotFoundError(f"{bindings_dir} holds no tensorrt_bindings package")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise FileNotFoundError("no C compiler (cc) for the stand-in TensorRT libraries")
    stubs = work / f"stubs-{version}"
    stubs.mkdir(parents=True, exist_ok=True)
    (work / "stub.c").write_text(_STUB_C)
    for lib in _LIBS:
        soname = f"{lib}.so.{version.split('.')[0]}"
        subprocess.run([cc, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(stubs / soname),
                        str(work / "stub.c")], check=True, capture_output=True)
    r = subprocess.run([sys.executable, __file__, str(bindings_dir), str(stubs)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"dumping TensorRT {version}'s bindings failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout)


@functools.lru_cache(maxsize=None)
def _specs(env: str) -> tuple[tuple[dict, ...], Optional[Exception]]:
    dirs = [d for d in env.split(os.pathsep) if d]
    work = tempfile.mkdtemp(prefix="trt-api-")
    try:
        found = [dump(d, work) for d in dirs]
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # kept: not dumped again by every test
        return (), e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tuple(sorted(found, key=lambda s: [int(x) for x in re.findall(r"\d+", s["version"])[:3]])), None


def specs() -> tuple[dict, ...]:
    """The API surfaces of the bindings named by $MQ_TEST_TRT_BINDINGS, oldest first (dumped once a session; a
    directory that cannot be dumped is an error in every test that asks)."""
    found, error = _specs(os.environ.get(ENV, ""))
    if error is not None:
        raise RuntimeError(f"{ENV}: {error}") from error
    return found


def spec_for(major: int) -> Optional[dict]:
    """The newest dumped API surface of TensorRT `major`, or None."""
    found = [s for s in specs() if s["version"].split(".")[0] == str(major)]
    return found[-1] if found else None


# -- the checked module ---------------------------------------------------------------------------
def _split_args(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(<{":
            depth += 1
        elif ch in "])>}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


@functools.lru_cache(maxsize=None)
def _parse(sig: str) -> tuple[list[tuple[str, str, bool]], str]:
    """"(a: T, b: U = d) -> R" → ([(a, T, False), (b, U, True)], R), class prefixes dropped."""
    m = re.match(r"^\((.*)\) -> (.+)$", sig)
    args, ret = m.group(1), m.group(2)
    params = []
    for p in _split_args(args):
        if p in ("*args", "**kwargs"):
            params.append((p, "object", True))
            continue
        name, _, rest = p.partition(": ")
        typ, eq, _default = rest.partition(" = ")
        params.append((name, _PREFIX.sub("", typ.strip()), bool(eq)))
    return params, _PREFIX.sub("", ret.strip())


# Return types pybind11 prints as C++ names, and the Python class TensorRT returns for them.
_RETURNS = {"get_plugin_registry": "IPluginRegistry", "nvonnxparser::IParserError": "ParserError"}
# Declared types the checker takes as they come (no class, enum or builtin to check them against).
_PASS = {"object", "capsule", "typing_extensions.CapsuleType", "numpy.ndarray", "typing.Any"}


class ApiError(AssertionError):
    """The fake (not the code under test) lacks something the real TensorRT has."""


class Dims(tuple):
    """TensorRT's Dims as our code uses it: a sequence of ints."""


class _Buffer(bytes):
    """An IHostMemory: memoryview() works as on TensorRT's (buffer protocol); like TensorRT's it has no len() and
    none of bytes' methods, only nbytes and dtype."""

    def __len__(self):
        raise TypeError("object of type 'IHostMemory' has no len()")

    def __getattribute__(self, name):
        if name == "nbytes":
            return bytes.__len__(self)
        if name == "dtype" or name.startswith("__"):
            return object.__getattribute__(self, name)
        raise AttributeError(f"'IHostMemory' object has no attribute '{name}'")


class _Enum(enum.Enum):
    """A TensorRT enum: like pybind11's, int() gives the value but a member is not an int."""

    def __int__(self):
        return self.value


class Checked:
    """An object of TensorRT class `cls` (spec), behaving as `impl` does."""

    def __init__(self, api: "CheckedModule", cls: str, impl):
        object.__setattr__(self, "_api", api)
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_impl", impl)

    def __getattr__(self, name):
        api, cls = self._api, self._cls
        found = api._member(cls, name)
        if found is None:
            raise AttributeError(f"'{cls}' object has no attribute '{name}' (TensorRT {api.__version__})")
        kind, spec = found
        if kind == "method":
            return api._callable(f"{cls}.{name}", spec, getattr(self._impl, name, None))
        if kind == "attr":
            return api._attr(spec)
        if not hasattr(self._impl, name):
            raise ApiError(f"the fake {cls} has no property {name}")
        return api._returned(f"{cls}.{name}", getattr(self._impl, name), spec["get"])

    def __str__(self):  # ParserError's message
        if self._api._member(self._cls, "__str__") is None:
            return object.__repr__(self)
        return str(self._impl)

    def __setattr__(self, name, value):
        api, cls = self._api, self._cls
        found = api._member(cls, name)
        if found is None or found[0] != "property":
            raise AttributeError(f"'{cls}' object has no attribute '{name}' (TensorRT {api.__version__})")
        if found[1]["set"] is None:
            raise AttributeError(f"{cls}.{name} is read-only (TensorRT {api.__version__})")
        if found[1]["set"] and not api._accepts(value, found[1]["set"], False):
            raise TypeError(f"{cls}.{name} takes {found[1]['set']}, not {value!r}")
        setattr(self._impl, name, api._unwrap(value))


class _Class:
    """A TensorRT class of the checked module: constructible as the spec's __init__ allows, with its enums and
    class attributes (Logger.WARNING)."""

    def __init__(self, api: "CheckedModule", name: str):
        self._api, self._name = api, name

    def __call__(self, *args, **kwargs):
        api, name = self._api, self._name
        sigs = api._spec["classes"][name]["init"]
        impl_cls = getattr(api._impl, name, None)
        if impl_cls is None:
            raise ApiError(f"the fake has no {name}")
        api._check_call(f"{name}()", sigs, args, kwargs)
        return Checked(api, name, impl_cls(*api._unwrap(args), **api._unwrap(kwargs)))

    def __mro_entries__(self, bases):
        """`class M(trt.IProgressMonitor)`: a Python class that overrides TensorRT's virtual methods (_Override)."""
        return (self._api._override_base(self._name),)

    def __getattr__(self, attr):
        found = self._api._member(self._name, attr)
        if found is None or found[0] != "attr":
            raise AttributeError(f"type object '{self._name}' has no attribute '{attr}' "
                                 f"(TensorRT {self._api.__version__})")
        return self._api._attr(found[1])


class _Override:
    """Base of the classes `CheckedModule._override_base` makes: a Python subclass of a TensorRT class whose virtual
    methods TensorRT calls back (IProgressMonitor, ILogger, ...), checked as pybind11 would: the base __init__ must
    run, an override must take TensorRT's arguments and return what TensorRT declares, and a method not overridden
    is a pure virtual call."""

    _trt_cls: str = ""
    _trt_api: "CheckedModule"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        api, name = cls._trt_api, cls._trt_cls
        for meth, sigs in api._spec["classes"][name]["methods"].items():
            fn = cls.__dict__.get(meth)
            if fn is None or meth.startswith("_"):
                continue
            params, ret = _parse(sigs[0])
            args = [p for p in params if p[0] != "self"]
            try:
                inspect.signature(fn).bind(None, *[None] * len(args))
            except TypeError:
                raise TypeError(f"{cls.__name__}.{meth} cannot take the arguments TensorRT {api.__version__} passes: "
                                f"{sigs[0]}") from None
            setattr(cls, meth, _returns_checked(api, f"{name}.{meth}", fn, ret))
        init = cls.__dict__.get("__init__")
        if init is not None:
            @functools.wraps(init)
            def checked_init(self, *a, **k):
                init(self, *a, **k)
                if type(self).__init__ is checked_init and not self.__dict__.get("_trt_base_init"):
                    raise TypeError(f"tensorrt.{name}.__init__() must be called when overriding __init__")
            cls.__init__ = checked_init


def _returns_checked(api: "CheckedModule", what: str, fn, ret: str):
    @functools.wraps(fn)
    def call(self, *args):
        value = fn(self, *args)
        if not api._accepts(value, ret, False) or (ret == "bool" and not isinstance(value, bool)):
            raise TypeError(f"{what} must return {ret} to TensorRT {api.__version__}, returned {value!r} (pybind11 "
                            "would convert it as it can: None from step_complete reads as False and cancels the build)")
        return value
    return call


class CheckedModule(types.ModuleType):
    def __init__(self, impl, spec: dict):
        super().__init__("tensorrt")
        self._impl, self._spec = impl, spec
        self.__version__ = spec["version"]
        self._enums = {name: _Enum(name.rpartition(".")[2], members) for name, members in spec["enums"].items()}
        self._override_bases: dict[str, type] = {}

    def _override_base(self, name: str) -> type:
        """The class a Python subclass of TensorRT class `name` derives from (one per name)."""
        if name not in self._override_bases:
            api, spec = self, self._spec["classes"][name]

            def __init__(obj, *args, **kwargs):
                api._check_call(f"{name}.__init__", spec["init"], args, kwargs)
                obj.__dict__["_trt_base_init"] = True

            ns: dict[str, Any] = {"__init__": __init__, "_trt_cls": name, "_trt_api": self}
            for meth in spec["methods"]:
                if not meth.startswith("_"):
                    def pure(obj, *args, _m=meth, **kwargs):
                        raise RuntimeError(f'Tried to call pure virtual function "{name}::{_m}"')
                    ns[meth] = pure
            self._override_bases[name] = type(name, (_Override,), ns)
        return self._override_bases[name]

    # module attributes: classes, enums, functions, values (float32, Logger.Severity aliases)
    def __getattr__(self, name):
        spec = self.__dict__.get("_spec")
        if spec is None or name.startswith("__"):
            raise AttributeError(name)
        if name in spec["enums"]:
            return self._enums[name]
        if name in spec["classes"]:
            return _Class(self, name)
        if name in spec["values"]:
            return self._attr(spec["values"][name])
        if name == "nptype":
            return self._nptype
        if name in spec["functions"]:
            return self._callable(name, spec["functions"][name], getattr(self._impl, name, None))
        raise AttributeError(f"module 'tensorrt' has no attribute '{name}' (TensorRT {spec['version']})")

    def _nptype(self, dtype):
        if not isinstance(dtype, _Enum) or dtype.name not in self._spec["nptype"]:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return np.dtype(self._spec["nptype"][dtype.name]).type

    def _attr(self, ref):
        if ref[0] == "enum":
            return self._enums[ref[1]]
        return self._enums[ref[1]][ref[2]]

    def _member(self, cls: str, name: str):
        """("method", sigs) / ("property", spec) / ("attr", ref) of `cls` or a base, or None."""
        while cls in self._spec["classes"]:
            c = self._spec["classes"][cls]
            if name in c["methods"]:
                return "method", c["methods"][name]
            if name in c["properties"]:
                return "property", c["properties"][name]
            if name in c["attrs"]:
                return "attr", c["attrs"][name]
            cls = c["bases"][0] if c["bases"] else None
        return None

    def _is_a(self, cls: str, want: str) -> bool:
        while cls is not None:
            if cls == want:
                return True
            bases = self._spec["classes"].get(cls, {}).get("bases", [])
            cls = bases[0] if bases else None
        return False

    def _accepts(self, value, typ: str, has_default: bool) -> bool:
        """Whether TensorRT takes `value` for a parameter of type `typ`: pybind11's conversions, except that an
        enum member for an int is refused (TensorRT takes it through __index__ and sets bit `value`, never meant)."""
        t = typ.strip()
        if m := re.fullmatch(r"(?:typing\.)?Optional\[(.+)\]", t):
            return value is None or self._accepts(value, m.group(1), False)
        if value is None and t in self._spec["classes"] and not _DIMS.fullmatch(t):
            return has_default  # a null pointer where the binding's default is None
        if t in ("int", "typing.SupportsInt"):
            if isinstance(value, _Enum):
                raise TypeError(f"{value} passed where TensorRT {self.__version__} takes an int: TensorRT would "
                                f"take {int(value)} (pybind11 enums have __index__); pass 1 << int(member) for a "
                                "flag word, or int(member)")
            return isinstance(value, (int, np.integer))
        if t in ("float", "typing.SupportsFloat"):
            return isinstance(value, (int, float, np.floating, np.integer))
        if t == "bool":  # pybind11: None, and anything with __bool__ as a number that gives 0 or 1
            return value is None or isinstance(value, (bool, np.bool_, int, np.integer)) and value in (0, 1)
        if t == "str":
            return isinstance(value, str)
        if t in ("capsule", "typing_extensions.CapsuleType"):  # init_libnvinfer_plugins: a logger, or a capsule
            if isinstance(value, _Override):  # a Python ILogger: pybind11 passes its C++ object
                return self._is_a(value._trt_cls, "ILogger")
            return isinstance(value, Checked) and self._is_a(value._cls, "ILogger")
        if t in ("buffer", "typing_extensions.Buffer", "collections.abc.Buffer"):
            try:
                memoryview(value)
            except TypeError:
                return False
            return True
        if t in ("None", "NoneType"):
            return value is None
        if _DIMS.fullmatch(t):
            return isinstance(value, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in value)
        if t in self._spec["enums"]:
            return isinstance(value, _Enum) and value.__class__ is self._enums[t]
        if t in self._spec["classes"]:
            if isinstance(value, _Override):
                return self._is_a(value._trt_cls, t)
            return isinstance(value, Checked) and self._is_a(value._cls, t)
        if re.fullmatch(r"(?:typing\.|collections\.abc\.)?(?:List|Sequence|list)\[.+\]", t):
            return isinstance(value, (list, tuple))
        if t in ("tuple", "list"):
            return isinstance(value, tuple if t == "tuple" else list)  # py::tuple / py::list
        return True  # object, numpy arrays, callables: not checked

    def _check_call(self, what: str, sigs: list[str], args, kwargs) -> str:
        """The return type of the first overload that takes (args, kwargs); TypeError, as pybind11 raises, if none."""
        for sig in sigs:
            params, ret = _parse(sig)
            if params and params[0][0] == "self":
                params = params[1:]
            if any(p[0] in ("*args", "**kwargs") for p in params):
                return ret
            if len(args) > len(params):
                continue
            names = [p[0] for p in params]
            if any(k not in names[len(args):] for k in kwargs):
                continue
            ok = True
            for i, (name, typ, has_default) in enumerate(params):
                if i < len(args):
                    ok = self._accepts(args[i], typ, has_default)
                elif name in kwargs:
                    ok = self._accepts(kwargs[name], typ, has_default)
                else:
                    ok = has_default
                if not ok:
                    break
            if ok:
                return ret
        raise TypeError(f"{what}(): incompatible function arguments for TensorRT {self.__version__}. The "
                        f"supported signatures are {sigs}; invoked with {args!r} {kwargs!r}")

    def _callable(self, what: str, sigs: list[str], impl_fn):
        def call(*args, **kwargs):
            ret = self._check_call(what, sigs, args, kwargs)
            if impl_fn is None:
                raise ApiError(f"the fake has no {what}")
            return self._returned(what, impl_fn(*self._unwrap(args), **self._unwrap(kwargs)), ret)
        return call

    def _returned(self, what: str, value, typ: str):
        """`value` (the fake's) as TensorRT returns a `typ`: checked, and wrapped in its class."""
        t = re.sub(r"^(?:typing\.)?Optional\[(.+)\]$", r"\1", typ.strip())
        t = _RETURNS.get(what.rpartition(".")[2], _RETURNS.get(t, re.sub(r"^nvinfer1::", "", t)))
        known = (t in self._spec["enums"] or t in self._spec["classes"] or _DIMS.fullmatch(t) or t in _PASS
                 or t in ("None", "bool", "int", "str", "float")
                 or re.fullmatch(r"(?:typing\.)?(?:List|list)\[.+\]", t))  # TensorRT 11 writes list[Dims]
        if not known:
            raise ApiError(f"{what}: the checker cannot read TensorRT {self.__version__}'s return type {t!r}; add it "
                           "to trt_api._RETURNS")
        if t in self._spec["enums"] and isinstance(value, str):
            if value not in self._enums[t].__members__:
                raise ApiError(f"{what}: TensorRT {self.__version__}'s {t} has no member {value}")
            value = self._enums[t][value]
        elif _DIMS.fullmatch(t) and isinstance(value, (tuple, list)):
            value = Dims(value)
        elif t in self._spec["classes"] and value is not None and not isinstance(value, Checked):
            if self._spec["classes"][t]["buffer"]:
                return _Buffer(bytes(value))
            return Checked(self, t, value)
        if value is not None and t not in _PASS and not self._accepts(value, t, False):
            raise ApiError(f"{what} returns {t} in TensorRT {self.__version__}; the fake returned {value!r}")
        return value

    def _unwrap(self, v):
        if isinstance(v, Checked):
            return v._impl
        if isinstance(v, dict):
            return {k: self._unwrap(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)) and not isinstance(v, Dims):
            return type(v)(self._unwrap(x) for x in v)
        return v


def checked(impl, spec: Optional[dict]):
    """`impl` behind TensorRT's API surface `spec` (a CheckedModule), or `impl` itself when spec is None."""
    return impl if spec is None else CheckedModule(impl, spec)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
