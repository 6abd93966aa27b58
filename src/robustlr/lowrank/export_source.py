"""The source of a self-contained Python file that rebuilds a module tree with torch alone (no robustlr).

:func:`module_source` walks the tree of an ``nn.Module`` and writes a file with a factory ``build()`` that
constructs the same architecture (weights uninitialised: load the state dict) and ``load()`` that also loads
the ``state_dict.pt`` beside the file. Three kinds of modules are written:

* a module of ``torch.nn`` other than a container (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.LeakyReLU`` …): one
  constructor call whose arguments are read back from the module's attributes of the same names (the
  signature of its ``__init__``; a ``bias`` argument is whether the module has a bias);
* ``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``: the empty container, then its children;
* any other class whose torch base is one of ``nn.Module`` and these containers (robustlr's model classes,
  ``Normalize``, users' classes): a class of the same name in the generated file, holding verbatim copies of
  the class's methods (``forward``, helpers, ``extra_repr`` …; ``__init__`` is not copied: the instance gets its
  plain attributes, parameters, buffers and children set one by one instead), and its literal class
  attributes. What the methods refer to must be importable from torch or the standard library, a literal
  constant, or another class of the file; anything else (a robustlr function, a closure) is refused.

Anything the file cannot express is refused with a ``ValueError`` naming the module (its path in the tree and
its type) and why; TorchScript (``torch.jit.trace``) is the fallback for such models. The writer checks the
tree it wrote against the original with :func:`check_rebuilt` (same ``repr``, same state-dict keys, shapes
and dtypes).
"""

from __future__ import annotations

import ast
import builtins
import dis
import importlib
import importlib.util
import inspect
import os
import sys
import textwrap
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["check_rebuilt", "import_source", "module_source"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_BASES = (nn.Module, *_CONTAINERS)
_MODULE_STATE = frozenset(nn.Module().__dict__)
_FALLBACK = "export it with format 'torchscript' instead"
_ALSO_IMPORTED_FROM = ("torch", "torch.nn.functional", "torch.nn")
_RESERVED = object()  # a name the generated file defines itself

_HELPERS = '''
def _assemble(module, attributes, parameters, buffers, children):
    """Give a freshly constructed ``module`` its plain attributes, parameters, buffers and submodules."""
    for name, value in attributes.items():
        setattr(module, name, value)
    for name, spec in parameters.items():
        if spec is None:
            module.register_parameter(name, None)
        else:
            shape, dtype, requires_grad = spec
            module.register_parameter(name, nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad))
    for name, spec in buffers.items():
        module.register_buffer(name, None if spec is None else torch.empty(spec[0], dtype=spec[1]))
    for name, child in children.items():
        module.add_module(name, child)
    return module
'''

_LOAD = '''

def load(state_dict=None, device="cpu"):
    """``build()`` with the weights of ``state_dict`` (default: the state_dict.pt beside this file), in eval
    mode on ``device``."""
    if state_dict is None:
        state_dict = os.path.join(os.path.dirname(os.path.abspath(__file__)), "state_dict.pt")
    model = build()
    model.load_state_dict(torch.load(state_dict, map_location="cpu", weights_only=True))
    return model.to(device).eval()
'''


def _refuse(path: str, module: object, reason: str) -> ValueError:
    where = path or "the model"
    kind = type(module) if not isinstance(module, type) else module
    return ValueError(f"cannot write {where} ({kind.__module__}.{kind.__qualname__}) as plain PyTorch source: "
                      f"{reason}; {_FALLBACK}")


def _is_torch(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "torch"


def _literal(value: object) -> str | None:
    """``repr(value)`` if it reads back as an equal value of the same type (a Python literal), else None."""
    text = repr(value)
    try:
        back = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return text if type(back) is type(value) and back == value else None


def _global_names(code: types.CodeType) -> Iterator[str]:
    """Names a code object (and the functions, lambdas and comprehensions inside it) loads as globals."""
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            yield instruction.argval
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


def _free_names(code: types.CodeType) -> set[str]:
    names = set(code.co_freevars)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _free_names(const) - set(code.co_cellvars)
    return names


@dataclass
class _Writer:
    """State of one :func:`module_source` call."""

    bound: dict[str, object] = field(default_factory=dict)  # global name of the file → the object it is
    imports: dict[str, str] = field(default_factory=dict)  # global name → the line that defines it
    classes: dict[type, str] = field(default_factory=dict)  # class → its definition in the file
    variables: dict[int, str] = field(default_factory=dict)  # id(module) → its variable in build()
    body: list[str] = field(default_factory=list)  # the lines of build()
    dtypes: set[torch.dtype] = field(default_factory=set)

    def __post_init__(self) -> None:
        for name, value, line in (("torch", torch, "import torch"), ("nn", nn, "from torch import nn"),
                                  ("os", os, "import os")):
            self.bound[name], self.imports[name] = value, line
        for name in ("_assemble", "build", "load", "annotations"):
            self.bound[name] = _RESERVED

    # -- globals of the file -------------------------------------------------------------------------------
    def bind(self, name: str, value: object, path: str, cls: type, method: str) -> None:
        """Make ``name`` (a global of ``cls``'s ``method``) mean ``value`` in the generated file: an import, a
        constant or an exported class."""
        uses = f"its method {method!r} refers to {name!r}"
        if name in self.bound:
            if self.bound[name] is value or (_literal(value) is not None and self.bound[name] == value):
                return
            raise _refuse(path, cls, f"{uses}, a name the generated file already uses for something else")
        if isinstance(value, type) and issubclass(value, nn.Module) and not _is_torch(value):
            if self.class_name(value, path) != name:
                raise _refuse(path, cls, f"{uses}, another name of the class {value.__qualname__}")
            return
        self.bound[name] = value
        self.imports[name] = self._definition(name, value, path, cls, uses)

    def _definition(self, name: str, value: object, path: str, cls: type, uses: str) -> str:
        if isinstance(value, types.ModuleType):
            top = value.__name__.split(".")[0]
            if top == "torch" or top in sys.stdlib_module_names:
                return f"import {value.__name__}" if value.__name__ == name else f"import {value.__name__} as {name}"
        origin = getattr(value, "__module__", None)
        if isinstance(origin, str) and (origin.split(".")[0] == "torch" or origin.split(".")[0] in
                                        sys.stdlib_module_names or origin == "builtins"):
            attribute = getattr(value, "__name__", None)
            for place in (origin, *_ALSO_IMPORTED_FROM):
                try:
                    found = getattr(importlib.import_module(place), attribute or "", None) is value
                except ImportError:
                    found = False
                if found:
                    return f"from {place} import {attribute}" + ("" if attribute == name else f" as {name}")
        text = _literal(value)
        if text is not None:
            return f"{name} = {text}"
        kind = type(value).__name__
        raise _refuse(path, cls, f"{uses} (a {kind} from module {origin or '?'}), which is neither torch, the standard "
                                 "library, a literal constant nor a class of the exported model")

    # -- classes ---------------------------------------------------------------------------------------------
    def class_name(self, cls: type, path: str) -> str:
        """The name of ``cls`` in the file, writing its definition the first time."""
        if cls in self.classes:
            return cls.__name__
        mro = cls.__mro__
        base_index = next(i for i, klass in enumerate(mro) if _is_torch(klass))
        base = mro[base_index]
        if base not in _BASES:
            raise _refuse(path, cls, f"it subclasses torch.nn.{base.__name__}, whose constructor arguments the "
                                     "generated file cannot know (allowed bases: nn.Module, nn.Sequential, "
                                     "nn.ModuleList, nn.ModuleDict)")
        if any(not _is_torch(klass) and klass is not object for klass in mro[base_index:]):
            raise _refuse(path, cls, "it has a non-torch class after its torch base in the method resolution order")
        if cls.__name__ in self.bound:
            raise _refuse(path, cls, f"its name {cls.__name__!r} is already used in the generated file")
        self.bound[cls.__name__] = cls
        self.classes[cls] = ""  # a method may refer to its own class
        self.classes[cls] = self._class_definition(cls, mro[:base_index], base, path)
        return cls.__name__

    def _class_definition(self, cls: type, own: tuple[type, ...], base: type, path: str) -> str:
        members: dict[str, object] = {}
        for klass in reversed(own):
            members.update(vars(klass))
        constants, methods = [], []
        for name, value in members.items():
            functions = _functions(value)
            if name in ("__init__", "_abc_impl") or (not functions and name.startswith("__") and name.endswith("__")):
                continue
            if functions:
                methods += [textwrap.indent(self._method(f, name, cls, len(own), path), "    ") for f in functions]
            elif _literal(value) is not None:
                constants.append(f"    {name} = {_literal(value)}")
            else:
                raise _refuse(path, cls, f"its class attribute {name!r} is a {type(value).__name__}, not a "
                                         "method or a Python literal")
        doc = f'    """{cls.__qualname__} of {cls.__module__}: its methods, copied."""'
        text = "\n\n".join([f"class {cls.__name__}(nn.{base.__name__}):\n{doc}" + "".join(f"\n{c}" for c in constants),
                             *methods])
        return "\n".join(line.rstrip() for line in text.splitlines())

    def _method(self, function: types.FunctionType, name: str, cls: type, depth: int, path: str) -> str:
        try:
            source = textwrap.dedent(inspect.getsource(function))
            tree = ast.parse(source)
        except (OSError, TypeError, SyntaxError) as error:
            raise _refuse(path, cls, f"the source of its method {name!r} is not available ({error})") from None
        node = tree.body[0] if len(tree.body) == 1 else None
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name != name:
            raise _refuse(path, cls, f"its attribute {name!r} is not defined by a 'def {name}' statement")
        free = _free_names(function.__code__)
        if free - {"__class__"} or ("__class__" in free and depth > 1):
            raise _refuse(path, cls, f"its method {name!r} uses variables of an enclosing scope "
                                     f"({sorted(free)}) or super() in a class hierarchy of its own")
        evaluated = [*node.decorator_list, *node.args.defaults, *(d for d in node.args.kw_defaults if d)]
        names = set(_global_names(function.__code__))
        decorated = {n.id for expr in evaluated for n in ast.walk(expr) if isinstance(n, ast.Name)}
        names |= decorated - {name}  # @name.setter is the property being defined
        for global_name in sorted(names):
            if global_name in function.__globals__:
                self.bind(global_name, function.__globals__[global_name], path, cls, name)
            elif not hasattr(builtins, global_name):
                raise _refuse(path, cls, f"its method {name!r} refers to {global_name!r}, which is not defined")
        return source.rstrip()

    # -- the module tree -----------------------------------------------------------------------------------------
    def visit(self, module: nn.Module, path: str) -> str:
        """The variable of ``build()`` that holds ``module``, writing its construction the first time."""
        if id(module) in self.variables:
            return self.variables[id(module)]
        hooks = [key for key, value in vars(module).items() if "hooks" in key and isinstance(value, dict) and value]
        if hooks:
            raise _refuse(path, module, f"it has hooks ({', '.join(hooks)}), which source code cannot hold")
        cls = type(module)
        if _is_torch(cls) and getattr(nn, cls.__name__, None) is not cls:
            raise _refuse(path, module, f"torch.nn has no class {cls.__name__}")
        leaf = _is_torch(cls) and not issubclass(cls, _CONTAINERS)  # built by its constructor, children included
        tensors = (*module.parameters(), *module.buffers()) if leaf else (*module._parameters.values(),
                                                                         *module._buffers.values())
        self.dtypes |= {t.dtype for t in tensors if t is not None and t.is_floating_point()}
        if leaf:
            expression = self._constructor(module, path)
        else:
            name = f"nn.{cls.__name__}" if _is_torch(cls) else self.class_name(cls, path)
            expression = self._assembly(module, f"{name}()", path)
        variable = f"m{len(self.variables)}"
        self.variables[id(module)] = variable
        self.body.append(f"    {variable} = {expression}  # {path or '(model)'}")
        return variable

    def _constructor(self, module: nn.Module, path: str) -> str:
        cls = type(module)
        arguments = []
        for parameter in inspect.signature(cls).parameters.values():
            variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            if variadic or parameter.name in ("device", "dtype"):
                continue
            key = parameter.name
            if key in module._parameters or key in module._buffers:
                value: Any = getattr(module, key) is not None
            elif key in vars(module):
                value = vars(module)[key]
            elif parameter.default is parameter.empty:
                raise _refuse(path, module, f"its constructor argument {key!r} is not stored on the module")
            else:
                continue
            text = _literal(value)
            if text is None:
                raise _refuse(path, module, f"its constructor argument {key!r} is {value!r}, not a Python literal")
            arguments.append(f"{key}={text}")
        return f"nn.{cls.__name__}({', '.join(arguments)})"

    def _assembly(self, module: nn.Module, construct: str, path: str) -> str:
        attributes = {}
        for key, value in vars(module).items():
            if key in _MODULE_STATE:
                continue
            text = _literal(value)
            if text is None:
                raise _refuse(path, module, f"its attribute {key!r} is a {type(value).__name__}, not a Python literal")
            attributes[key] = text
        parameters = {key: None if p is None else f"({tuple(p.shape)}, {p.dtype}, {p.requires_grad})"
                      for key, p in module._parameters.items()}
        persistent = [key for key in module._buffers if key in module._non_persistent_buffers_set]
        if persistent:
            raise _refuse(path, module, f"its buffers {persistent} are not persistent (not in the state dict)")
        buffers = {key: None if b is None else f"({tuple(b.shape)}, {b.dtype})" for key, b in module._buffers.items()}
        children = {key: "None" if child is None else self.visit(child, f"{path}.{key}" if path else key)
                    for key, child in module._modules.items()}
        if not (attributes or parameters or buffers or children):
            return construct
        parts = [_mapping(attributes), _mapping(parameters), _mapping(buffers), _mapping(children)]
        return f"_assemble({construct}, {', '.join(parts)})"


def _functions(value: object) -> list[types.FunctionType]:
    """The functions behind a class member that is a method (plain, static, class or property), else []."""
    if isinstance(value, types.FunctionType):
        return [value]
    if isinstance(value, (staticmethod, classmethod)):
        return [value.__func__]
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if f is not None]
    return []


def _mapping(entries: dict[str, str | None]) -> str:
    return "{" + ", ".join(f"{key!r}: {'None' if text is None else text}" for key, text in entries.items()) + "}"


def module_source(model: nn.Module, docstring: str = "") -> str:
    """The text of a Python file that rebuilds ``model``'s architecture with torch alone.

    The file defines ``build() -> nn.Module`` (the architecture, in train mode, with uninitialised weights in
    the model's dtype; load its state dict) and ``load(state_dict=None, device="cpu")`` (``build()`` plus the
    weights of ``state_dict.pt`` beside the file, in eval mode). ``docstring`` opens the file. Modules used in
    several places stay shared.

    Raises:
        ValueError: naming the module (path and type) and the reason, for what the file cannot hold: hooks,
            non-literal attributes, methods that refer to non-torch code, torch modules whose constructor
            arguments are not stored, non-persistent buffers, several floating dtypes (see the module docstring).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    writer = _Writer()
    root = writer.visit(model, "")
    if len(writer.dtypes) > 1:
        dtypes = sorted(map(str, writer.dtypes))
        raise _refuse("", model, f"its parameters and buffers have several floating dtypes {dtypes}")
    cast = f".to({next(iter(writer.dtypes))})" if writer.dtypes else ""
    header = f'"""{docstring.strip()}\n"""\n\n' if docstring.strip() else ""
    imports = "\n".join(sorted((line for line in writer.imports.values() if line.startswith(("import", "from"))),
                               key=lambda line: (line.startswith("from"), line)))
    constants = "\n".join(line for line in writer.imports.values() if not line.startswith(("import", "from")))
    classes = "\n\n\n".join(writer.classes.values())
    build = "\n".join(['def build() -> nn.Module:', '    """The exported architecture (train mode, weights '
                       'not loaded)."""', *writer.body, f"    return {root}{cast}"])
    sections = [f"{header}from __future__ import annotations\n\n{imports}", constants, _HELPERS.strip(), classes, build]
    return "\n\n\n".join(section for section in sections if section) + "\n" + _LOAD


def import_source(path: str | os.PathLike[str]) -> types.ModuleType:
    """Import the generated file at ``path`` as a module of its own (not entered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(f"robustlr_export_{abs(hash(str(path)))}", Path(path))
    if spec is None or spec.loader is None:
        raise ValueError(f"path must be a Python file; got {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_rebuilt(rebuilt: nn.Module, model: nn.Module, state: Mapping[str, Any]) -> nn.Module:
    """Load ``state`` (``model``'s saved state dict) into ``rebuilt`` (from the generated ``build()``) and require
    ``model``'s architecture: the same state-dict keys, shapes and dtypes, then the same ``repr`` (every module's
    type name and settings). Returns ``rebuilt``.

    Raises:
        ValueError: naming the first difference.
    """
    mine, theirs = _tensor_specs(rebuilt), _tensor_specs(model)
    if mine != theirs:
        key = next(k for k in [*mine, *theirs] if mine.get(k) != theirs.get(k))
        raise ValueError(f"the generated source does not rebuild the model: state-dict entry {key!r} is "
                         f"{mine.get(key, 'missing')}, expected {theirs.get(key, 'missing')}; {_FALLBACK}")
    rebuilt.load_state_dict(state)
    got, want = repr(rebuilt).splitlines(), repr(model).splitlines()
    for line, (mine_line, their_line) in enumerate(zip(got + [""], want + [""]), 1):
        if mine_line != their_line:
            raise ValueError(f"the generated source does not rebuild the model: line {line} of its repr is "
                             f"{mine_line.strip()!r}, expected {their_line.strip()!r}; {_FALLBACK}")
    return rebuilt


def _tensor_specs(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype] | None]:
    return {key: (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else None
            for key, t in model.state_dict().items()}
