#!/usr/bin/env python3
"""
A Kubernetes API emulator for berth's Kubernetes executor tests: kmock (PyPI, pinned 0.8 by
tests/kmock/constraints.txt) plus this shim, which makes it behave like a real API server as far
as kube-rs and kube-runtime can tell.

Usage (with the python that scripts/kmock.sh prints):

    python tests/kmock/shim.py [--port N] [--bookmark-interval S] [--exit-on-eof] [--verbose]
        Serves plain HTTP on 127.0.0.1 (no TLS, no auth). Prints exactly one line on stdout,
        `LISTENING <port>`, once the socket is bound (port 0, the default, picks a free one).
        Runs until SIGTERM or SIGINT (clean shutdown: open watches and log follows are ended),
        or, with --exit-on-eof, until its stdin is closed (so it dies with the test process
        that spawned it). Logs go to stderr; --verbose logs every request there.

    python tests/kmock/shim.py --self-test
        Starts a server as a subprocess, drives the scenario of tests/kmock/README.md over HTTP
        and exits 0 when every check passes.

What the shim does on top of kmock (kmock 0.8 alone breaks kube-rs in many ways: see README.md):

* It serves every resource request itself (create, get, list, watch, patch, put, delete,
  deletecollection, the status subresource and pods/log) on top of kmock's object store, and
  leaves kmock the HTTP server, request parsing, API discovery (the bundled K3s resource list)
  and Status error rendering. Every state change is synchronous Python with no `await` in it,
  so each request's change is atomic on the event loop and resourceVersions are assigned and
  emitted in order.
* Objects get uid, resourceVersion (one global counter, like etcd), creationTimestamp,
  generation, namespace, apiVersion and kind. Names (and generateName) and label values are
  validated like the real server (422 Invalid). Create returns 201.
* Errors are real `Status` objects: NotFound, AlreadyExists, Conflict, Invalid, BadRequest,
  MethodNotAllowed, Expired (410 inside a watch stream).
* PATCH understands JSON patch, JSON merge patch, strategic merge patch (lists merged by the
  usual Kubernetes merge keys: containers by name, conditions by type, ...; `$patch` directives)
  and server-side apply (treated as a strategic merge; creates missing objects). A
  `metadata.resourceVersion` in the body is a precondition (409 Conflict when stale).
  Writes to `/status` change only `.status`; writes to the main resource keep `.status` for
  resources that have a status subresource. No-op updates keep the resourceVersion and emit
  nothing. Removing the last finalizer of an object being deleted deletes it.
* LIST and WATCH filter by label and field selectors; LIST pages with limit/continue. WATCH
  follows the resourceVersion semantics from an event history: unset or "0" starts with
  synthetic ADDED events for the current objects, a resourceVersion N replays every change
  after N (ERROR 410 Expired if N was compacted away), objects entering or leaving a selector
  become ADDED or DELETED, BOOKMARKs are sent every --bookmark-interval seconds with
  allowWatchBookmarks=true, sendInitialEvents=true ends its initial events with the
  `k8s.io/initial-events-end` bookmark, and timeoutSeconds ends the stream.
* DELETE honours finalizers, preconditions and propagationPolicy: Foreground and Background
  delete every object whose ownerReferences name the deleted uid (recursively; Foreground
  deletes the dependents first), Orphan strips those ownerReferences. Without a policy, jobs
  orphan their pods (the batch/v1 default) and everything else cascades in the background.
  Deleting a namespace deletes everything in it. Namespaces need not exist (permissive).
* pods/log serves text fed through the control endpoint below, with tailLines and limitBytes;
  follow=true streams new text until the pod's phase is Succeeded or Failed, the pod is
  deleted, or the log is closed through the control endpoint.

Control endpoints (not Kubernetes API; for the tests that play kubelet and controllers):

    POST /_shim/pods/{namespace}/{pod}/log[?close=true]
        Appends the raw request body to the pod's log (the pod need not exist yet);
        close=true also marks the log complete, which ends `follow=true` streams.
        Responds {"bytes": <total log length>, "closed": <bool>}.
    GET /_shim/verbs
        The RBAC verbs of the resource requests sent with the header `X-Shim-Audit: yes`,
        as a sorted list of [apiGroup, resource (with "/subresource"), verb]: get, list,
        watch, create, update, patch, delete, deletecollection (what an RBAC rule names).
    POST /_shim/compact
        Forgets the watch event history: a watch from any older resourceVersion then gets
        ERROR 410 Expired, which exercises the watcher's re-list path.

The shim relies on kmock internals (the `_objects` store, `parsing.parse_path`,
`_requests`, `_errors`), which is why every dependency is pinned exactly.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import copy
import datetime
import importlib.metadata
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer

import kmock
from kmock._internal import k8s as kmock_k8s, parsing, references, rendering

KMOCK_VERSION = '0.8'  # the version this shim was written against (tests/kmock/constraints.txt)
HISTORY_LIMIT = 100_000  # watch events kept for resuming watches; older ones are compacted
TERMINAL_PHASES = ('Succeeded', 'Failed')

Obj = dict[str, Any]
Key = tuple[references.resource, str | None, str]  # (resource, namespace or None, name)


def rbac_verb(method: str, name: str | None, request: Any) -> str:
    """The RBAC verb Kubernetes' authorizer would check for this request."""
    method = method.upper()
    if method == 'GET':
        if request.params.get('watch') in ('true', '1'):
            return 'watch'
        return 'get' if name else 'list'
    if method == 'DELETE':
        return 'delete' if name else 'deletecollection'
    return {'POST': 'create', 'PUT': 'update', 'PATCH': 'patch'}.get(method, method.lower())


def log(message: str) -> None:
    print(f'kmock-shim: {message}', file=sys.stderr, flush=True)


def now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


# ---------------------------------------------------------------------------------------------
# Routing fix: kmock 0.8 reads /api/v1/namespaces/NAME as "namespace NAME, no resource" and
# crashes on /api/v1/namespaces itself. Route the core/v1 namespaces resource properly. kmock
# calls `parsing.parse_path` through the module, so replacing the attribute is enough.
# ---------------------------------------------------------------------------------------------

_NAMESPACES_PATH = re.compile(r'^/?api/v1/namespaces(?:/([^/]+))?(?:/(status|finalize))?/?$')
_original_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    if m := _NAMESPACES_PATH.match(path):
        return parsing.ParsedPath(group='', version='v1', plural='namespaces',
                                  namespace=None, name=m.group(1), subresource=m.group(2))
    return _original_parse_path(path)


def install_namespace_routing() -> None:
    parsing.parse_path = _parse_path


# ---------------------------------------------------------------------------------------------
# Errors: kubernetes `Status` objects. kmock renders KubernetesError; the shim's _render_error
# (below) drops kmock's tracebacks and maps kmock's own reasons to the real ones.
# ---------------------------------------------------------------------------------------------

def api_error(code: int, reason: str, message: str, details: Obj | None = None) -> kmock_k8s.KubernetesError:
    return kmock_k8s.KubernetesError(status=code, reason=reason, message=message, details=details or {})


def qualified(res: references.resource) -> str:
    """The resource as the real server names it in messages: `jobs.batch`, `pods`."""
    return f'{res.plural}.{res.group}' if res.group else str(res.plural)


def not_found(res: references.resource, name: str) -> kmock_k8s.KubernetesError:
    return api_error(404, 'NotFound', f'{qualified(res)} "{name}" not found',
                     {'name': name, 'group': res.group or '', 'kind': res.plural})


def conflict(res: references.resource, name: str, why: str = 'the object has been modified; please'
             ' apply your changes to the latest version and try again') -> kmock_k8s.KubernetesError:
    return api_error(409, 'Conflict', f'Operation cannot be fulfilled on {qualified(res)} "{name}": {why}',
                     {'name': name, 'group': res.group or '', 'kind': res.plural})


def bad_request(message: str) -> kmock_k8s.KubernetesError:
    return api_error(400, 'BadRequest', message)


class Invalid(Exception):
    """A field validation failure; turned into a 422 Invalid Status naming the object."""

    def __init__(self, field: str, value: Any, detail: str, *, required: bool = False) -> None:
        super().__init__(detail)
        self.field, self.value, self.detail, self.required = field, value, detail, required


# ---------------------------------------------------------------------------------------------
# Validation of names and labels, with the real server's rules and messages.
# ---------------------------------------------------------------------------------------------

_DNS_LABEL = r'[a-z0-9]([-a-z0-9]*[a-z0-9])?'
_DNS_SUBDOMAIN = re.compile(rf'{_DNS_LABEL}(\.{_DNS_LABEL})*')
_DNS_LABEL_RE = re.compile(_DNS_LABEL)
_LABEL_NAME = re.compile(r'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')
_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-'"
                  " or '.', and must start and end with an alphanumeric character")
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and"
              " must start and end with an alphanumeric character")
_LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_'"
                    " or '.', and must start and end with an alphanumeric character")


def validate_name(res: references.resource, name: str) -> None:
    if res.plural == 'namespaces':  # namespaces are DNS labels, most other names DNS subdomains
        if len(name) > 63:
            raise Invalid('metadata.name', name, 'must be no more than 63 characters')
        if not _DNS_LABEL_RE.fullmatch(name):
            raise Invalid('metadata.name', name, _LABEL_MSG)
        return
    if len(name) > 253:
        raise Invalid('metadata.name', name, 'must be no more than 253 characters')
    if not _DNS_SUBDOMAIN.fullmatch(name):
        raise Invalid('metadata.name', name, _SUBDOMAIN_MSG)
    if res.group == 'batch' and res.plural == 'jobs' and len(name) > 63:
        # The job controller puts the job's name into its pods' `batch.kubernetes.io/job-name` label.
        raise Invalid('spec.template.labels', name, 'must be no more than 63 characters')


def validate_labels(labels: Any) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise Invalid('metadata.labels', labels, 'must be a map of strings')
    for key, value in labels.items():
        prefix, _, name = key.rpartition('/')
        if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
            raise Invalid('metadata.labels', key, f'prefix part {_SUBDOMAIN_MSG}')
        if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
            raise Invalid('metadata.labels', key, "name part must consist of alphanumeric characters,"
                          " '-', '_' or '.', must start and end with an alphanumeric character, and"
                          " must be no more than 63 characters")
        if not isinstance(value, str):
            raise Invalid(f'metadata.labels', value, 'label values must be strings')
        if len(value) > 63:
            raise Invalid('metadata.labels', value, 'must be no more than 63 characters')
        if value and not _LABEL_NAME.fullmatch(value):
            raise Invalid('metadata.labels', value, _LABEL_VALUE_MSG)


# ---------------------------------------------------------------------------------------------
# Label and field selectors (LIST, WATCH, deletecollection).
# ---------------------------------------------------------------------------------------------

def _split_terms(selector: str) -> list[str]:
    """Split on the commas that are not inside `in (...)` value lists."""
    return [t.strip() for t in re.split(r',(?![^()]*\))', selector) if t.strip()]


LabelRequirement = tuple[str, str, frozenset[str]]  # (key, op, values); op: in notin exists !exists


def parse_label_selector(selector: str | None) -> list[LabelRequirement]:
    requirements: list[LabelRequirement] = []
    for term in _split_terms(selector or ''):
        if m := re.fullmatch(r'([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)', term):
            values = frozenset(v.strip() for v in m.group(3).split(',') if v.strip())
            requirements.append((m.group(1), m.group(2), values))
        elif m := re.fullmatch(r'([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)', term):
            op = 'notin' if m.group(2) == '!=' else 'in'
            requirements.append((m.group(1), op, frozenset([m.group(3)])))
        elif m := re.fullmatch(r'!\s*([^\s!=(),]+)', term):
            requirements.append((m.group(1), '!exists', frozenset()))
        elif re.fullmatch(r'[^\s!=(),]+', term):
            requirements.append((term, 'exists', frozenset()))
        else:
            raise bad_request(f'unable to parse requirement: {term!r}: found unexpected input')
    return requirements


def labels_match(requirements: list[LabelRequirement], labels: Any) -> bool:
    labels = labels if isinstance(labels, dict) else {}
    for key, op, values in requirements:
        present = key in labels
        if op == 'in' and not (present and labels[key] in values):
            return False
        if op == 'notin' and present and labels[key] in values:
            return False
        if op == 'exists' and not present:
            return False
        if op == '!exists' and present:
            return False
    return True


FieldRequirement = tuple[list[str], bool, str]  # (dotted path, equal?, value)


def parse_field_selector(selector: str | None) -> list[FieldRequirement]:
    requirements: list[FieldRequirement] = []
    for term in _split_terms(selector or ''):
        m = re.fullmatch(r'([^\s!=,]+)\s*(==|=|!=)\s*([^\s,]*)', term)
        if not m:
            raise bad_request(f'invalid field selector: {term!r}')
        requirements.append((m.group(1).split('.'), m.group(2) != '!=', m.group(3)))
    return requirements


def fields_match(requirements: list[FieldRequirement], obj: Obj) -> bool:
    for path, equal, value in requirements:
        current: Any = obj
        for part in path:
            current = current.get(part) if isinstance(current, dict) else None
        current = '' if current is None else str(current).lower() if isinstance(current, bool) else str(current)
        if (current == value) != equal:
            return False
    return True


@attrs.frozen
class Selection:
    """What a LIST, WATCH or deletecollection asks for, parsed once per request."""
    resource: references.resource
    namespace: str | None  # None: all namespaces
    name: str | None  # a watch on a named URL
    labels: list[LabelRequirement]
    fields: list[FieldRequirement]

    def matches(self, namespace: str | None, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and namespace != self.namespace:
            return False
        meta = obj.get('metadata') or {}
        if self.name is not None and meta.get('name') != self.name:
            return False
        return labels_match(self.labels, meta.get('labels')) and fields_match(self.fields, obj)


# ---------------------------------------------------------------------------------------------
# Patches: JSON merge patch (RFC 7386), strategic merge patch, JSON patch (RFC 6902).
# ---------------------------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Lists that strategic merge patch merges item by item, by this key (from the patchMergeKey tags
# of k8s.io/api). Any other list is atomic: the patch's list replaces it.
SMP_MERGE_KEYS = {
    'containers': 'name', 'initContainers': 'name', 'ephemeralContainers': 'name',
    'env': 'name', 'volumes': 'name', 'volumeMounts': 'mountPath', 'volumeDevices': 'devicePath',
    'imagePullSecrets': 'name', 'hostAliases': 'ip', 'resourceClaims': 'name',
    'topologySpreadConstraints': 'topologyKey', 'conditions': 'type', 'addresses': 'type',
    'podIPs': 'ip', 'hostIPs': 'ip', 'ownerReferences': 'uid',
}
SMP_PRIMITIVE_MERGE = {'finalizers'}  # lists of scalars merged as sets
_SMP_DELETE = object()


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith('$')}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


def _smp_merge_key(field: str | None, items: list[Any]) -> str | None:
    if field == 'ports':  # container ports merge by containerPort, service ports by port
        dicts = [i for i in items if isinstance(i, dict)]
        if dicts and all('containerPort' in i for i in dicts):
            return 'containerPort'
        if dicts and all('port' in i for i in dicts):
            return 'port'
        return None
    return SMP_MERGE_KEYS.get(field or '')


def _smp_list(original: Any, patch: list[Any], field: str | None) -> list[Any]:
    current = copy.deepcopy(original) if isinstance(original, list) else []
    if field in SMP_PRIMITIVE_MERGE:
        for item in patch:
            if item not in current:
                current.append(copy.deepcopy(item))
        return current
    if any(isinstance(i, dict) and i.get('$patch') == 'replace' for i in patch):
        return [_strip_directives(i) for i in patch if not (isinstance(i, dict) and i.get('$patch') == 'replace')]
    key = _smp_merge_key(field, current + patch)
    if key is None:
        return _strip_directives(patch)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            current.append(_strip_directives(item))
            continue
        index = next((n for n, old in enumerate(current) if isinstance(old, dict) and old.get(key) == item[key]), None)
        if item.get('$patch') == 'delete':
            current = [old for old in current if not (isinstance(old, dict) and old.get(key) == item[key])]
        elif index is None:
            current.append(_strip_directives(item))
        else:
            current[index] = strategic_merge_patch(current[index], item)
    return current


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge patch, for the built-in types' common lists.

    Supported: merge keys (SMP_MERGE_KEYS), primitive set-merge (finalizers), `$patch: replace`
    and `$patch: delete` on maps and list items, `$deleteFromPrimitiveList/<field>`, null deletes.
    Ignored: `$retainKeys`, `$setElementOrder/<field>` (order is the original's, then new items).
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get('$patch')
    if directive == 'delete':
        return _SMP_DELETE
    if directive == 'replace':
        return _strip_directives(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith('$deleteFromPrimitiveList/'):
            field = key.split('/', 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [item for item in result[field] if item not in value]
            continue
        if key.startswith('$'):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is _SMP_DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(result.get(key), value, key)
        else:
            result[key] = value
    return result


def json_patch(target: Obj, patch: Any) -> Any:
    if not isinstance(patch, list):
        raise bad_request('a JSON patch must be a JSON array of operations')
    try:
        return jsonpatch.apply_patch(copy.deepcopy(target), patch, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as e:
        raise api_error(422, 'Invalid', f'the server rejected our request due to an error in our request: {e}')


# ---------------------------------------------------------------------------------------------
# The emulator.
# ---------------------------------------------------------------------------------------------

@attrs.frozen
class Event:
    """One change, kept in the watch history. `old` is the previous state of a MODIFIED object."""
    rv: int
    resource: references.resource
    namespace: str | None
    type: str  # ADDED MODIFIED DELETED
    obj: Obj
    old: Obj | None


@attrs.define
class PodLog:
    text: str = ''
    closed: bool = False


@attrs.define(kw_only=True)
class ShimEmulator(kmock.KubernetesEmulator):
    bookmark_interval: float = 1.0
    verbose: bool = False

    _rv: int = attrs.field(default=0, init=False)
    _history: list[Event] = attrs.field(factory=list, init=False)
    _history_floor: int = attrs.field(default=0, init=False)  # events with rv <= this are gone
    _wakeup: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    logs: dict[tuple[str, str], PodLog] = attrs.field(factory=dict, init=False)
    verbs: set[tuple[str, str, str]] = attrs.field(factory=set, init=False)

    # ---- plumbing ----------------------------------------------------------------------------

    def close(self) -> None:
        """End every open watch and log follow, so that the HTTP server can shut down promptly."""
        self._closing = True
        self._notify()

    def _notify(self) -> None:
        """Wake every waiting watch and log follow (they re-check their state)."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    async def _sleep(self, waiter: asyncio.Event, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        method = raw.method.upper()
        try:
            if request.url.path.startswith('/_shim/'):
                response = await self._serve_control(request)
            elif request.resource is None or request.resource.plural is None:
                # Discovery (/api, /apis/..., /version) and anything else: kmock's own reactions.
                if request.resource is not None and method != 'GET':
                    raise api_error(405, 'MethodNotAllowed', 'the server does not allow this method'
                                    ' on the requested resource')
                response = await super()._handle(request)
            else:
                # The shim serves resource requests without kmock's reaction machinery, so they
                # need not stay in kmock's request log (which would grow for the whole run).
                if self._requests and self._requests[-1] is request:
                    self._requests.pop()
                response = await self._serve_resource(request, method)
        except Exception as e:
            if self.verbose:
                status = e.status if isinstance(e, kmock_k8s.KubernetesError) else 500
                log(f'{raw.method} {raw.path_qs} -> {status} {getattr(e, "reason", "") or type(e).__name__}')
            raise  # kmock's RawHandler renders it through _render_error
        if self.verbose:
            log(f'{raw.method} {raw.path_qs} -> {response.status}')
        return response

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # kmock keeps every failed request's exception for its pytest integration: drop it here.
        if self._errors and self._errors[-1] and self._errors[-1][-1] is exc:
            self._errors[-1].pop()
        if isinstance(exc, Invalid):  # only raised outside an object's context: a plain 422
            exc = api_error(422, 'Invalid', f'{exc.field}: Invalid value: {json.dumps(exc.value)}: {exc.detail}')
        if isinstance(exc, kmock_k8s.KubernetesError):
            if isinstance(exc, kmock_k8s.KubernetesNotFoundError):  # kmock's own 404s
                reason, message, details = 'NotFound', 'the server could not find the requested resource', {}
            elif isinstance(exc, kmock_k8s.KubernetesObjectConflictError):
                reason, message, details = 'AlreadyExists', exc.message, {}
            else:
                reason, message, details = exc.reason, exc.message, exc.details
            body = {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
                    'message': message or reason, 'reason': reason, 'details': details or {}, 'code': exc.status}
            return aiohttp.web.json_response(body, status=exc.status)
        log('internal error:\n' + ''.join(traceback.format_exception(exc)))
        return aiohttp.web.json_response({
            'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
            'message': f'internal error in the kmock shim: {exc!r}', 'reason': 'InternalError', 'code': 500,
        }, status=500)

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and payload.get('groupVersion') == '/v1':
            payload['groupVersion'] = 'v1'  # kmock 0.8 says "/v1" for the core group
        return payload

    # ---- resource metadata ---------------------------------------------------------------------

    def _info(self, res: references.resource) -> references.ResourceInfo | None:
        # Not `self.resources[res]`: that inserts an empty entry for unknown resources.
        return self.resources[res] if res in self.resources else None

    def _type_meta(self, res: references.resource) -> tuple[str, str]:
        info = self._info(res)
        api_version = f'{res.group}/{res.version}' if res.group else str(res.version)
        kind = info.kind if info and info.kind else str(res.plural).capitalize()
        return api_version, kind

    def _namespaced(self, res: references.resource, request: rendering.Request) -> bool:
        info = self._info(res)
        if info is not None and info.namespaced is not None:
            return info.namespaced
        return request.namespace is not None  # an unknown resource: as the URL says

    def _has_status(self, res: references.resource) -> bool:
        info = self._info(res)
        return bool(info and 'status' in info.subresources)

    def _invalid(self, res: references.resource, name: str, e: Invalid) -> kmock_k8s.KubernetesError:
        _, kind = self._type_meta(res)
        what = f'{kind}.{res.group}' if res.group else kind
        detail = ('Required value: ' if e.required else f'Invalid value: {json.dumps(e.value)}: ') + e.detail
        cause = {'reason': 'FieldValueRequired' if e.required else 'FieldValueInvalid',
                 'message': detail, 'field': e.field}
        return api_error(422, 'Invalid', f'{what} "{name}" is invalid: {e.field}: {detail}',
                         {'name': name, 'group': res.group or '', 'kind': kind, 'causes': [cause]})

    # ---- the object store (kmock's ObjectsArray; versions are never mutated in place) ----------

    def _current(self, key: Key) -> Obj | None:
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else obj.raw

    def _live(self, resource: references.resource | None = None):  # -> Iterator[tuple[Key, Obj]]
        for key, obj in list(self._objects.items()):
            if not obj.deleted and (resource is None or key[0] == resource):
                yield key, obj.raw

    def _commit(self, key: Key, type_: str, new: Obj, old: Obj | None = None) -> Obj:
        """Store a new state (or a deletion) with the next resourceVersion and record the event."""
        self._rv += 1
        new = copy.deepcopy(new)
        new.setdefault('metadata', {})['resourceVersion'] = str(self._rv)
        if type_ == 'DELETED':
            self._objects[key].delete()
        elif key in self._objects:
            self._objects[key].create(new)  # appends a version; keeps kmock's history
        else:
            self._objects[key] = new
        self._history.append(Event(self._rv, key[0], key[1], type_, new, old))
        if len(self._history) > HISTORY_LIMIT:
            self._compact(len(self._history) // 2)
        self._notify()
        return new

    def _compact(self, count: int) -> None:
        if count > 0 and self._history:
            self._history_floor = self._history[min(count, len(self._history)) - 1].rv
            del self._history[:count]

    # ---- dispatch ------------------------------------------------------------------------------

    async def _serve_resource(self, request: rendering.Request, method: str) -> aiohttp.web.StreamResponse:
        res, name, sub = request.resource, request.name, request.subresource
        assert res is not None
        raw = request._raw_request
        if raw is not None and raw.headers.get('X-Shim-Audit') == 'yes':
            self.verbs.add((res.group or '', res.plural + (f'/{sub}' if sub else ''), rbac_verb(method, name, request)))
        if sub == 'log' and res.group == '' and res.plural == 'pods' and name and method == 'GET':
            return await self._serve_log(request)
        if sub not in (None, 'status'):
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        if method == 'GET' and request.params.get('watch') in ('true', '1'):
            return await self._serve_watch_stream(request)
        if method == 'GET':
            return self._json(self._fetch(request) if name else self._list(request))
        if method == 'POST' and not name:
            return self._json(self._create(request, request.data), status=201)
        if method in ('PATCH', 'PUT') and name:
            return self._json(*self._update(request, method))
        if method == 'DELETE' and name:
            return self._json(self._delete(request))
        if method == 'DELETE' and sub is None:
            return self._json(self._delete_collection(request))
        raise api_error(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource')

    @staticmethod
    def _json(payload: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=json.dumps(payload).encode(), status=status, content_type='application/json')

    def _key(self, request: rendering.Request, name: str, body_namespace: str | None = None) -> Key:
        res = request.resource
        assert res is not None
        if not self._namespaced(res, request):
            return res, None, name
        # Permissive: namespaces need not exist, and a cluster-wide URL takes the body's namespace.
        return res, request.namespace or body_namespace or 'default', name

    # ---- reads ---------------------------------------------------------------------------------

    def _fetch(self, request: rendering.Request) -> Obj:
        assert request.resource is not None and request.name is not None
        current = self._current(self._key(request, request.name))
        if current is None:
            raise not_found(request.resource, request.name)
        return current

    def _selection(self, request: rendering.Request) -> Selection:
        assert request.resource is not None
        namespace = request.namespace if self._namespaced(request.resource, request) else None
        return Selection(resource=request.resource, namespace=namespace, name=request.name,
                         labels=parse_label_selector(request.params.get('labelSelector')),
                         fields=parse_field_selector(request.params.get('fieldSelector')))

    def _select(self, selection: Selection) -> list[tuple[Key, Obj]]:
        found = [(key, obj) for key, obj in self._live(selection.resource) if selection.matches(key[1], obj)]
        return sorted(found, key=lambda item: (item[0][1] or '', item[0][2]))

    def _list(self, request: rendering.Request) -> Obj:
        res = request.resource
        assert res is not None
        if res not in self._get_resources():  # neither in discovery nor ever stored
            raise api_error(404, 'NotFound', 'the server could not find the requested resource')
        api_version, kind = self._type_meta(res)
        found = self._select(self._selection(request))
        meta: Obj = {'resourceVersion': str(self._rv)}
        # limit/continue: the token is the (namespace, name) of the last item sent.
        if token := request.params.get('continue'):
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(token.encode())))
            except ValueError:
                raise api_error(410, 'Expired', 'the provided continue parameter is invalid')
            found = [item for item in found if (item[0][1] or '', item[0][2]) > after]
        limit = int(request.params.get('limit') or 0)
        if 0 < limit < len(found):
            last = found[limit - 1][0]
            meta['continue'] = base64.urlsafe_b64encode(json.dumps([last[1] or '', last[2]]).encode()).decode()
            meta['remainingItemCount'] = len(found) - limit
            found = found[:limit]
        return {'apiVersion': api_version, 'kind': f'{kind}List', 'metadata': meta,
                'items': [obj for _, obj in found]}

    # ---- writes --------------------------------------------------------------------------------

    def _create(self, request: rendering.Request, body: Any, name: str | None = None) -> Obj:
        res = request.resource
        assert res is not None
        if not isinstance(body, dict):
            raise bad_request('the request body must be a JSON object')
        api_version, kind = self._type_meta(res)
        if body.get('apiVersion') not in (None, '', api_version) or body.get('kind') not in (None, '', kind):
            raise bad_request(f'the API version or kind in the data ({body.get("apiVersion")}, {body.get("kind")})'
                              f' does not match the expected ones ({api_version}, {kind})')
        obj = copy.deepcopy(body)
        obj['apiVersion'], obj['kind'] = api_version, kind
        meta = obj.setdefault('metadata', {})
        if not isinstance(meta, dict):
            raise bad_request('metadata must be a JSON object')
        name = name or meta.get('name')
        key_name = name or ''
        try:
            if not name:
                prefix = meta.get('generateName')
                if not prefix:
                    raise Invalid('metadata.name', '', 'name or generateName is required', required=True)
                for _ in range(100):
                    name = prefix + ''.join(random.choices('bcdfghjklmnpqrstvwxz2456789', k=5))
                    if self._current(self._key(request, name, meta.get('namespace'))) is None:
                        break
                key_name = name
            validate_name(res, name)
            validate_labels(meta.get('labels'))
        except Invalid as e:
            raise self._invalid(res, key_name, e)
        key = self._key(request, name, meta.get('namespace'))
        if request.namespace and meta.get('namespace') not in (None, '', request.namespace):
            raise bad_request('the namespace of the provided object does not match the namespace sent on the request')
        if self._current(key) is not None:
            raise api_error(409, 'AlreadyExists', f'{qualified(res)} "{name}" already exists',
                            {'name': name, 'group': res.group or '', 'kind': res.plural})
        for server_owned in ('uid', 'resourceVersion', 'creationTimestamp', 'deletionTimestamp',
                             'deletionGracePeriodSeconds', 'generation', 'managedFields', 'selfLink'):
            meta.pop(server_owned, None)
        meta['name'] = name
        if key[1] is not None:
            meta['namespace'] = key[1]
        else:
            meta.pop('namespace', None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        if self._has_status(res):  # the real server ignores .status on create
            obj['status'] = {}
        if res.group == '' and res.plural == 'pods':
            obj['status'] = {'phase': 'Pending'}
        elif res.group == '' and res.plural == 'namespaces':
            obj['status'] = {'phase': 'Active'}
        return self._commit(key, 'ADDED', obj)

    def _update(self, request: rendering.Request, method: str) -> tuple[Obj, int]:
        res, name, body = request.resource, request.name, request.data
        assert res is not None and name is not None
        assert request._raw_request is not None  # request.headers lost case-insensitivity
        ctype = (request._raw_request.headers.get('Content-Type') or '').split(';')[0].strip().lower()
        key = self._key(request, name, body.get('metadata', {}).get('namespace') if isinstance(body, dict) else None)
        current = self._current(key)
        if current is None:
            if method == 'PATCH' and ctype.startswith('application/apply-patch') and request.subresource is None:
                return self._create(request, body, name=name), 201  # server-side apply creates
            raise not_found(res, name)

        # The precondition: a resourceVersion in the body must be the current one.
        if isinstance(body, dict):
            wanted = (body.get('metadata') or {}).get('resourceVersion')
            if wanted and wanted != current['metadata'].get('resourceVersion'):
                raise conflict(res, name)

        if method == 'PUT':
            if not isinstance(body, dict):
                raise bad_request('the request body must be a JSON object')
            patched = copy.deepcopy(body)
        elif ctype == 'application/json-patch+json' or isinstance(body, list):
            patched = json_patch(current, body)
        elif not isinstance(body, dict):
            raise bad_request('the patch must be a JSON object')
        elif ctype == 'application/strategic-merge-patch+json' or ctype.startswith('application/apply-patch'):
            patched = strategic_merge_patch(current, body)  # server-side apply: approximated by SMP
        else:  # application/merge-patch+json, or anything else that is a JSON object
            patched = merge_patch(current, body)
        if not isinstance(patched, dict):
            raise bad_request('the patched object is not a JSON object')

        if request.subresource == 'status':
            new = copy.deepcopy(current)  # /status changes .status only
            if patched.get('status') is None:
                new.pop('status', None)
            else:
                new['status'] = patched['status']
        else:
            new = patched
            if self._has_status(res):  # the main resource cannot change .status
                if current.get('status') is None:
                    new.pop('status', None)
                else:
                    new['status'] = copy.deepcopy(current['status'])
            new['apiVersion'], new['kind'] = current.get('apiVersion'), current.get('kind')
            meta = new.get('metadata')
            if not isinstance(meta, dict):
                meta = new['metadata'] = {}
            for identity in ('name', 'namespace', 'uid', 'creationTimestamp', 'generation',
                             'deletionTimestamp', 'deletionGracePeriodSeconds'):
                if identity in current['metadata']:
                    meta[identity] = current['metadata'][identity]
                else:
                    meta.pop(identity, None)
            meta.pop('managedFields', None)
            try:
                validate_labels(meta.get('labels'))
            except Invalid as e:
                raise self._invalid(res, name, e)
            if new.get('spec') != current.get('spec'):
                meta['generation'] = int(current['metadata'].get('generation') or 1) + 1

        # A no-op update keeps the resourceVersion and emits no event, as the real server does.
        new.setdefault('metadata', {})['resourceVersion'] = current['metadata'].get('resourceVersion')
        if new == current:
            return current, 200
        meta = new['metadata']
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            return self._commit(key, 'DELETED', new), 200  # the last finalizer is gone
        return self._commit(key, 'MODIFIED', new, current), 200

    def _delete_options(self, request: rendering.Request) -> Obj:
        body = request.data if isinstance(request.data, dict) else {}
        options = dict(body)
        for param in ('propagationPolicy', 'gracePeriodSeconds', 'orphanDependents'):
            if param in request.params:
                options[param] = request.params[param]
        return options

    def _policy(self, res: references.resource, options: Obj) -> str:
        policy = options.get('propagationPolicy')
        if policy in ('Orphan', 'Background', 'Foreground'):
            return policy
        if policy:
            raise bad_request(f'propagationPolicy: Unsupported value: "{policy}"')
        if str(options.get('orphanDependents')).lower() == 'true':
            return 'Orphan'
        return 'Orphan' if (res.group, res.plural) == ('batch', 'jobs') else 'Background'

    def _delete(self, request: rendering.Request) -> Obj:
        res, name = request.resource, request.name
        assert res is not None and name is not None
        key = self._key(request, name)
        current = self._current(key)
        if current is None:
            raise not_found(res, name)
        options = self._delete_options(request)
        preconditions = options.get('preconditions') or {}
        for field in ('uid', 'resourceVersion'):
            wanted = preconditions.get(field)
            if wanted and wanted != current['metadata'].get(field):
                raise conflict(res, name, f'Precondition failed: {field}: {wanted}, '
                               f'ObjectMeta.{field}: {current["metadata"].get(field)}')
        return self._delete_object(key, current, self._policy(res, options), set())

    def _delete_object(self, key: Key, current: Obj, policy: str, seen: set[str]) -> Obj:
        """Delete one object (or mark it, if it has finalizers) and apply the propagation policy."""
        uid = current['metadata'].get('uid') or ''
        seen.add(uid)
        if policy == 'Foreground':  # dependents first, then the owner
            self._cascade(uid, policy, seen)
        meta = current['metadata']
        if meta.get('finalizers'):
            if meta.get('deletionTimestamp'):
                result = current
            else:
                marked = copy.deepcopy(current)
                marked['metadata'].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
                result = self._commit(key, 'MODIFIED', marked, current)
        else:
            result = self._commit(key, 'DELETED', current)
            res, namespace, name = key
            if res.group == '' and res.plural == 'pods':
                self.logs.pop((namespace or '', name), None)
            if res.group == '' and res.plural == 'namespaces':
                for inner_key, inner in list(self._live()):
                    if inner_key[1] == name:
                        self._delete_object(inner_key, inner, 'Background', seen)
        if policy == 'Background':
            self._cascade(uid, policy, seen)
        elif policy == 'Orphan':
            for dep_key, dep in self._dependents(uid):
                orphan = copy.deepcopy(dep)
                refs = [r for r in dep['metadata']['ownerReferences'] if r.get('uid') != uid]
                if refs:
                    orphan['metadata']['ownerReferences'] = refs
                else:
                    orphan['metadata'].pop('ownerReferences', None)
                self._commit(dep_key, 'MODIFIED', orphan, dep)
        return result

    def _dependents(self, uid: str) -> list[tuple[Key, Obj]]:
        return [(key, obj) for key, obj in self._live()
                if uid and any(isinstance(r, dict) and r.get('uid') == uid
                               for r in (obj.get('metadata') or {}).get('ownerReferences') or [])]

    def _cascade(self, uid: str, policy: str, seen: set[str]) -> None:
        for dep_key, dep in self._dependents(uid):
            if dep['metadata'].get('uid') not in seen:
                self._delete_object(dep_key, dep, policy, seen)

    def _delete_collection(self, request: rendering.Request) -> Obj:
        res = request.resource
        assert res is not None
        api_version, kind = self._type_meta(res)
        policy = self._policy(res, self._delete_options(request))
        deleted, seen = [], set()
        for key, obj in self._select(self._selection(request)):
            if obj['metadata'].get('uid') not in seen and self._current(key) is not None:
                deleted.append(self._delete_object(key, self._current(key) or obj, policy, seen))
        return {'apiVersion': api_version, 'kind': f'{kind}List',
                'metadata': {'resourceVersion': str(self._rv)}, 'items': deleted}

    # ---- watch ---------------------------------------------------------------------------------

    def _translate(self, event: Event, selection: Selection) -> Obj | None:
        """The event as this watch sees it: objects entering or leaving the selection become
        ADDED or DELETED, as the real server's watch cache reports them."""
        if event.resource != selection.resource:
            return None
        now_in = selection.matches(event.namespace, event.obj)
        if event.type == 'MODIFIED':
            was_in = selection.matches(event.namespace, event.old)
            type_ = 'MODIFIED' if now_in and was_in else 'ADDED' if now_in else 'DELETED' if was_in else None
        else:
            type_ = event.type if now_in else None
        return {'type': type_, 'object': event.obj} if type_ else None

    async def _serve_watch_stream(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        assert res is not None and request._raw_request is not None
        selection = self._selection(request)
        api_version, kind = self._type_meta(res)
        params = request.params
        since = params.get('resourceVersion') or ''
        if since not in ('', '0') and not since.isdigit():
            raise bad_request(f'invalid resource version: {since!r}')
        bookmarks = params.get('allowWatchBookmarks') == 'true'
        initial_events_end = params.get('sendInitialEvents') == 'true'
        timeout = float(params['timeoutSeconds']) if params.get('timeoutSeconds') else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None

        # The starting point, taken synchronously so that no change slips in between.
        if since in ('', '0') or initial_events_end:
            initial = [{'type': 'ADDED', 'object': obj} for _, obj in self._select(selection)]
            cursor = self._rv
        else:
            initial, cursor = [], int(since)

        response = aiohttp.web.StreamResponse(headers={'Content-Type': 'application/json'})
        await response.prepare(request._raw_request)

        def bookmark(annotations: dict[str, str] | None = None) -> Obj:
            meta: Obj = {'resourceVersion': str(cursor)}
            if annotations:
                meta['annotations'] = annotations
            return {'type': 'BOOKMARK', 'object': {'apiVersion': api_version, 'kind': kind, 'metadata': meta}}

        async def send(events: list[Obj]) -> None:
            if events:
                await response.write(b''.join(json.dumps(e).encode() + b'\n' for e in events))

        try:
            if initial_events_end:
                initial.append(bookmark({'k8s.io/initial-events-end': 'true'}))
            await send(initial)
            last_sent = loop.time()
            while not self._closing:
                if cursor < self._history_floor:
                    await send([{'type': 'ERROR', 'object': {
                        'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
                        'message': f'too old resource version: {cursor} ({self._history_floor + 1})',
                        'reason': 'Expired', 'code': 410}}])
                    break
                waiter = self._wakeup  # taken before reading the history: no change can be missed
                start = bisect.bisect_right(self._history, cursor, key=lambda e: e.rv)
                pending = self._history[start:]
                if pending:
                    cursor = pending[-1].rv
                    events = [e for e in (self._translate(ev, selection) for ev in pending) if e]
                    if events:
                        await send(events)
                        last_sent = loop.time()
                    continue
                cursor = max(cursor, self._rv)  # every change up to now has been seen
                remaining = deadline - loop.time() if deadline is not None else None
                if remaining is not None and remaining <= 0:
                    break
                tick = 1.0 if remaining is None else min(1.0, remaining)
                if bookmarks:
                    until_bookmark = last_sent + self.bookmark_interval - loop.time()
                    if until_bookmark <= 0:
                        await send([bookmark()])
                        last_sent = loop.time()
                        continue
                    tick = min(tick, until_bookmark)
                await self._sleep(waiter, tick)
                transport = request._raw_request.transport
                if transport is None or transport.is_closing():
                    break  # the client went away
            await response.write_eof()
        except ConnectionError:
            pass  # the client disconnected; nothing to clean up
        return response

    # ---- pods/log --------------------------------------------------------------------------------

    async def _serve_log(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        assert request.resource is not None and request.name is not None and request._raw_request is not None
        key = self._key(request, request.name)
        if self._current(key) is None:
            raise not_found(request.resource, request.name)
        log_key = (key[1] or '', key[2])
        params = request.params
        follow = params.get('follow') in ('true', '1')
        try:
            tail = int(params['tailLines']) if params.get('tailLines') not in (None, '') else None
            limit = int(params['limitBytes']) if params.get('limitBytes') not in (None, '') else None
        except ValueError:
            raise bad_request('tailLines and limitBytes must be integers')

        text = self.logs.get(log_key, PodLog()).text
        position = len(text)
        if tail is not None:
            text = ''.join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ''
        sent = 0

        def clip(chunk: str) -> bytes:
            data = chunk.encode()
            return data if limit is None else data[:max(0, limit - sent)]

        if not follow:
            return aiohttp.web.Response(body=clip(text), content_type='text/plain')

        response = aiohttp.web.StreamResponse(headers={'Content-Type': 'text/plain'})
        await response.prepare(request._raw_request)
        try:
            chunk = clip(text)
            while True:
                if chunk:
                    await response.write(chunk)
                    sent += len(chunk)
                if limit is not None and sent >= limit:
                    break
                waiter = self._wakeup
                # Decide to stop *before* reading the new text, so that text appended before the
                # pod finished (or before the log was closed) is still sent.
                pod = self._current(key)
                state = self.logs.get(log_key, PodLog())
                phase = ((pod or {}).get('status') or {}).get('phase')
                done = pod is None or phase in TERMINAL_PHASES or state.closed or self._closing
                if len(state.text) < position:  # the pod was deleted and recreated
                    position = 0
                chunk, position = clip(state.text[position:]), len(state.text)
                if done:
                    if chunk:
                        await response.write(chunk)
                    break
                if not chunk:
                    await self._sleep(waiter, 1.0)
                    transport = request._raw_request.transport
                    if transport is None or transport.is_closing():
                        break
            await response.write_eof()
        except ConnectionError:
            pass  # the client disconnected
        return response

    # ---- control endpoints ---------------------------------------------------------------------

    async def _serve_control(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        path = request.url.path
        if raw.method.upper() == 'POST' and (m := re.fullmatch(r'/_shim/pods/([^/]+)/([^/]+)/log', path)):
            state = self.logs.setdefault((m.group(1), m.group(2)), PodLog())
            state.text += request.body.decode('utf-8', errors='replace')
            if request.params.get('close') in ('true', '1'):
                state.closed = True
            self._notify()
            return self._json({'bytes': len(state.text), 'closed': state.closed})
        if raw.method.upper() == 'GET' and path == '/_shim/verbs':
            return self._json(sorted(list(v) for v in self.verbs))
        if raw.method.upper() == 'POST' and path == '/_shim/compact':
            self._compact(len(self._history))
            self._history_floor = self._rv
            self._notify()
            return self._json({'resourceVersion': str(self._rv)})
        raise api_error(404, 'NotFound', f'no such shim control endpoint: {raw.method} {path}')


# ---------------------------------------------------------------------------------------------
# The launcher.
# ---------------------------------------------------------------------------------------------

async def serve(port: int, bookmark_interval: float, exit_on_eof: bool, verbose: bool) -> None:
    installed = importlib.metadata.version('kmock')
    if installed != KMOCK_VERSION:
        log(f'warning: written for kmock=={KMOCK_VERSION}, running on kmock=={installed}')
    install_namespace_routing()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if exit_on_eof:
        def wait_for_eof() -> None:
            while sys.stdin.buffer.read(65536):
                pass
            loop.call_soon_threadsafe(stop.set)
        threading.Thread(target=wait_for_eof, daemon=True).start()

    # The handler must be entered (`async with`): kmock renders errors only inside it.
    async with ShimEmulator(bookmark_interval=bookmark_interval, verbose=verbose) as shim, \
            kmock.Server(shim, host='127.0.0.1', port=port or None) as server:
        shim.resources.load_bundled()  # discovery: the K3s built-in resources shipped with kmock
        print(f'LISTENING {server.port}', flush=True)
        await stop.wait()
        shim.close()  # ends watches and log follows, so that the server stops at once
        # A stuck connection must not keep the process alive.
        watchdog = threading.Timer(5.0, lambda: os._exit(0))
        watchdog.daemon = True
        watchdog.start()


# ---------------------------------------------------------------------------------------------
# --self-test: the README's scenario over HTTP, against a server in a subprocess.
# ---------------------------------------------------------------------------------------------

def _call(base: str, method: str, path: str, body: Any = None, ctype: str = 'application/json',
          timeout: float = 10) -> tuple[int, Any]:
    data = body.encode() if isinstance(body, str) else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={'Content-Type': ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            code, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        code, raw = e.code, e.read()
    text = raw.decode()
    try:
        return code, json.loads(text)
    except ValueError:
        return code, text


def _watch(base: str, path: str, seconds: float) -> tuple[threading.Thread, list[Obj]]:
    events: list[Obj] = []

    def run() -> None:
        try:
            with urllib.request.urlopen(base + path, timeout=seconds + 5) as resp:
                for line in resp:
                    if line.strip():
                        events.append(json.loads(line))
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, events


def self_test() -> int:
    proc = subprocess.Popen([sys.executable, __file__, '--port', '0'], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if line[:1] != ['LISTENING']:
        print(f'FAIL: no LISTENING line: {line}')
        return 1
    base = f'http://127.0.0.1:{line[1]}'
    jobs = '/apis/batch/v1/namespaces/t/jobs'
    job = {'apiVersion': 'batch/v1', 'kind': 'Job', 'metadata': {'name': 'j1', 'labels': {'app': 'a'}},
           'spec': {'template': {'spec': {'restartPolicy': 'Never', 'containers': [{'name': 'c', 'image': 'x'}]}}}}
    failures = 0

    def check(what: str, ok: bool, got: Any = '') -> None:
        nonlocal failures
        failures += not ok
        print(f'{"ok  " if ok else "FAIL"} {what}' + ('' if ok else f': {got!r}'))

    try:
        watcher, events = _watch(base, '/apis/batch/v1/jobs?watch=true&labelSelector=app%3Da&timeoutSeconds=3', 3)
        time.sleep(0.5)
        code, created = _call(base, 'POST', jobs, job)
        check('create job: 201 with uid and resourceVersion', code == 201 and 'uid' in created['metadata']
              and created['metadata']['resourceVersion'].isdigit(), (code, created))
        code, again = _call(base, 'POST', jobs, job)
        check('create again: 409 AlreadyExists', (code, again.get('reason')) == (409, 'AlreadyExists'), again)
        code, missing = _call(base, 'GET', jobs + '/nope')
        check('get missing: 404 NotFound', (code, missing.get('reason')) == (404, 'NotFound'), missing)
        _call(base, 'POST', jobs, dict(job, metadata={'name': 'j2', 'labels': {'app': 'b'}}))
        code, listed = _call(base, 'GET', '/apis/batch/v1/jobs?labelSelector=app%3Da')
        check('list labelSelector app=a', [i['metadata']['name'] for i in listed['items']] == ['j1'], listed)
        code, patched = _call(base, 'PATCH', jobs + '/j1/status', {'status': {'active': 1}},
                              'application/merge-patch+json')
        check('merge-patch /status', code == 200 and patched['status'] == {'active': 1}, patched)
        code, patched = _call(base, 'PATCH', jobs + '/j1/status', {'status': {'conditions': [
            {'type': 'Complete', 'status': 'True'}]}}, 'application/strategic-merge-patch+json')
        check('strategic-merge-patch /status', code == 200 and patched['status']['active'] == 1
              and patched['status']['conditions'][0]['type'] == 'Complete', patched)
        pod = {'apiVersion': 'v1', 'kind': 'Pod', 'metadata': {'name': 'j1-abcde', 'ownerReferences': [
            {'apiVersion': 'batch/v1', 'kind': 'Job', 'name': 'j1', 'uid': created['metadata']['uid']}]},
            'spec': {'containers': [{'name': 'c', 'image': 'x'}]}}
        code, _ = _call(base, 'POST', '/api/v1/namespaces/t/pods', pod)
        check('create pod with ownerReference', code == 201)
        _call(base, 'POST', '/_shim/pods/t/j1-abcde/log', 'one\ntwo\nthree\n', 'text/plain')
        code, text = _call(base, 'GET', '/api/v1/namespaces/t/pods/j1-abcde/log?tailLines=2')
        check('pods/log tailLines=2', text == 'two\nthree\n', text)
        follower, _ = None, None
        result: list[Any] = []
        follower = threading.Thread(target=lambda: result.append(
            _call(base, 'GET', '/api/v1/namespaces/t/pods/j1-abcde/log?follow=true')), daemon=True)
        follower.start()
        time.sleep(0.3)
        _call(base, 'POST', '/_shim/pods/t/j1-abcde/log', 'four\n', 'text/plain')
        _call(base, 'PATCH', '/api/v1/namespaces/t/pods/j1-abcde/status', {'status': {'phase': 'Succeeded'}},
              'application/merge-patch+json')
        follower.join(5)
        check('pods/log follow ends when the pod succeeds', result == [(200, 'one\ntwo\nthree\nfour\n')], result)
        code, deleted = _call(base, 'DELETE', jobs + '/j1', {'propagationPolicy': 'Foreground'})
        check('delete job (Foreground)', code == 200, deleted)
        code, gone = _call(base, 'GET', '/api/v1/namespaces/t/pods/j1-abcde')
        check('the pod was deleted with its job', code == 404, gone)
        code, ns = _call(base, 'POST', '/api/v1/namespaces', {'metadata': {'name': 'team'}})
        check('namespaces POST', code == 201 and ns['status']['phase'] == 'Active', ns)
        code, ns = _call(base, 'GET', '/api/v1/namespaces/team')
        check('namespaces GET', code == 200 and ns['metadata']['name'] == 'team', ns)
        watcher.join(6)
        seen = [(e['type'], e['object']['metadata']['name']) for e in events]
        check('watch: ADDED, MODIFIED x2, DELETED for j1', seen == [('ADDED', 'j1'), ('MODIFIED', 'j1'),
              ('MODIFIED', 'j1'), ('DELETED', 'j1')], seen)
        rvs = [int(e['object']['metadata']['resourceVersion']) for e in events]
        check('watch: resourceVersions increase', rvs == sorted(set(rvs)), rvs)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            check('SIGTERM: exits 0', proc.wait(10) == 0)
        except subprocess.TimeoutExpired:
            proc.kill()
            check('SIGTERM: exits', False)
    print('self-test:', 'FAILED' if failures else 'passed')
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    parser.add_argument('--port', type=int, default=0, help='TCP port on 127.0.0.1 (0: a free one)')
    parser.add_argument('--bookmark-interval', type=float, default=1.0,
                        help='seconds between BOOKMARK events on idle watches (allowWatchBookmarks=true)')
    parser.add_argument('--exit-on-eof', action='store_true', help='exit when stdin is closed')
    parser.add_argument('--verbose', action='store_true', help='log every request to stderr')
    parser.add_argument('--self-test', action='store_true', help='run the HTTP self-test and exit')
    args = parser.parse_args()
    if args.self_test:
        sys.exit(self_test())
    asyncio.run(serve(args.port, args.bookmark_interval, args.exit_on_eof, args.verbose))


if __name__ == '__main__':
    main()
