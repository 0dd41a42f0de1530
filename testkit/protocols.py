"""Check a library's real objects against the Protocol we describe them with.

Our typed boundary modules (`neuronpedia_graph.models.protocols` for circuit-tracer and the
tokenizer, `neuronpedia_graph.serving.gunicorn_types` for gunicorn) name, as Protocols, the
members we use of libraries that ship no usable types. mypy checks our code against those
Protocols, but it cannot check the libraries against them: these functions do, at runtime, on
real classes and instances, so an upgrade that renames or drops a member fails a test instead of
a request. One checker serves every boundary, so they are all held to the same rules:

- a member must be on the object's class (method, property, class attribute) or on the object;
- a method must accept every call the Protocol allows (its required parameters alone, then all
  of them), passed as the Protocol passes them, positionally or by keyword; a method written
  in C without a signature (a socket's) counts as present;
- with `check_values`, a data member or property must hold a value of the declared type, and a
  Protocol-typed value is checked the same way, recursively.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable, Mapping

import typing_extensions
from pydantic import TypeAdapter, ValidationError


def accepts(protocol_method: Callable[..., object], implementation: object) -> str | None:
    """None if `implementation` accepts every call `protocol_method` allows, else why not."""
    if not callable(implementation):
        return "is not callable"
    try:
        signature = inspect.signature(implementation)
    except ValueError:  # written in C with no signature (socket methods): presence suffices
        return None
    declared = list(inspect.signature(protocol_method).parameters.values())[1:]  # minus self
    for with_optional in (False, True):
        args: list[object] = []
        kwargs: dict[str, object] = {}
        for p in declared:
            if p.default is not inspect.Parameter.empty and not with_optional:
                continue
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[p.name] = object()  # binding checks names and kinds, not values
            elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                args += [object(), object()]
            elif p.kind is not inspect.Parameter.VAR_KEYWORD:
                args.append(object())
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            shown = ", ".join([f"<{len(args)} positional>", *kwargs])
            return f"does not accept ({shown}): {exc}"
    return None


def conformance_problems(
    protocol: type,
    obj: object,
    *,
    cls: type | None = None,
    where: str = "",
    check_values: bool = True,
    namespace: Mapping[str, object] | None = None,
) -> list[str]:
    """Every way `obj` fails to provide `protocol`; an empty list when it provides it.

    Args:
        protocol: a `typing.Protocol` class.
        obj: the real object (an instance, as the code receives it).
        cls: the class to look members up on, when `obj` stands in for one of its instances;
            `type(obj)` by default.
        where: the name problems start with; the class's name by default.
        check_values: also check each data member's and property's value against its
            annotation (needs the annotations to resolve: see `namespace`).
        namespace: names the Protocol's module imports for type checkers only (for example
            `{"torch": torch}`), to resolve its annotations.

    Returns:
        One line per problem, e.g. "Config.keepalive is missing".
    """
    cls = cls or type(obj)
    where = where or cls.__name__
    own = vars(protocol)
    problems: list[str] = []
    for name in sorted(typing_extensions.get_protocol_members(protocol)):
        label = f"{where}.{name}"
        declared = own.get(name)
        present = _on_class(cls, name) or hasattr(obj, name)
        if inspect.isfunction(declared):
            if not present:
                problems.append(f"{label} is missing (a method)")
            elif (reason := accepts(declared, getattr(obj, name))) is not None:
                problems.append(f"{label} {reason}")
            continue
        if not present:
            problems.append(f"{label} is missing")
        elif check_values:
            owner = declared.fget if isinstance(declared, property) else protocol
            hint = _hints(owner, protocol, namespace)["return" if owner is not protocol else name]
            problems += _value_problems(getattr(obj, name), hint, label, namespace)
    return problems


def _on_class(cls: type, name: str) -> bool:
    try:
        inspect.getattr_static(cls, name)
    except AttributeError:
        return False
    return True


def _hints(
    owner: object, protocol: type, namespace: Mapping[str, object] | None
) -> dict[str, object]:
    module = vars(sys.modules[protocol.__module__])
    return typing.get_type_hints(owner, dict(module), dict(namespace or {}))


def _value_problems(
    value: object, hint: object, where: str, namespace: Mapping[str, object] | None
) -> list[str]:
    """Why `value` is not of the declared type `hint` (an empty list when it is)."""
    if isinstance(hint, type) and getattr(hint, "_is_protocol", False):
        return conformance_problems(hint, value, where=where, namespace=namespace)
    if isinstance(hint, type) and not typing.get_args(hint) and hint.__module__ != "builtins":
        # a library class (a tensor): its instances are what we rely on, not their contents
        return [] if isinstance(value, hint) else [f"{where} is a {type(value)}, not {hint}"]
    if typing.get_origin(hint) is Callable or hint is Callable:
        return [] if callable(value) else [f"{where} is not callable"]
    try:
        TypeAdapter(hint).validate_python(value, strict=True)
    except ValidationError as exc:
        return [f"{where} = {value!r:.60} is not {hint}: {exc.errors()[0]['msg']}"]
    return []
