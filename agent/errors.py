"""The one exception tree of Lattice Edge.

Every error the agent raises on purpose derives from :class:`LatticeEdgeError`. Foreign
exceptions (``OSError``, ``tomllib.TOMLDecodeError``, ``nkeys`` errors, ``wasm3``'s
``RuntimeError``) are converted where they enter the project, with ``raise ... from exc``,
so callers catch our types and the CLI can print one clear line for any of them::

    LatticeEdgeError
    ├── ConfigError                 a config file or override is wrong (names key and file)
    ├── ProfileError                unknown profile, unreadable profile file
    ├── IdentityError
    │   ├── KeyFileError            seed file missing, unreadable, wrong kind of key
    │   ├── JWTError                malformed JWT, bad signature, wrong claims type
    │   └── CredsError              .creds file missing or malformed
    ├── LeafError
    │   ├── NatsServerNotFound      no nats-server binary anywhere we look
    │   ├── LeafConfigError         the leaf config cannot be rendered
    │   └── LeafStartError          nats-server exited or never became ready
    ├── AgentStateError             status/control cannot reach a running agent
    │   └── AgentRunningError       another agent already runs on this data directory
    ├── StateError                  durable state cannot be written or read (disk full, read-only)
    ├── ForwardError                store-and-forward: the outbox cannot be created or read
    ├── ModuleError                 a wasm module is unusable
    │   ├── ModuleFormatError       bad magic/version, truncated or oversized sections
    │   ├── ModuleImportError       imports outside the allowed set
    │   ├── UnsupportedFeatureError features wasm3 0.5 cannot parse
    │   ├── ModuleExportError       no ``__guest_call(i32, i32) -> i32``: not a waPC actor
    │   ├── MemoryLimitError        needs more linear memory than the page budget
    │   └── ClaimsError             wascap claims reject the module
    │       ├── UnsignedModuleError
    │       ├── SignatureError
    │       ├── UntrustedIssuerError
    │       ├── ClaimsExpiredError  (also: not yet valid)
    │       └── HashMismatchError
    │           └── LegacyHashError  a pre-revision-3 hash that does not match (unverifiable)
    ├── ActorError                  an actor failed while loaded or invoked
    │   ├── GuestError              the guest returned an error (``__guest_error``)
    │   ├── TrapError               the guest trapped (unreachable, OOB, stack overflow)
    │   ├── InvocationTimeout       the invocation passed its deadline; the worker was killed
    │   ├── WorkerCrashed           the sandbox worker died (segfault, rlimit)
    │   ├── ActorQuarantined        the actor killed its worker too often
    │   ├── ActorRefError           an actor reference is malformed or cannot be fetched
    │   ├── HostCallError           a host call an actor made has no handler or failed
    │   │   └── CapabilityError     a built-in capability refused or failed a host call
    │   │       ├── CapabilityDenied        the actor's claims lack the namespace
    │   │       ├── UnknownCapability       no built-in capability serves the namespace
    │   │       ├── UnknownOperation        the capability has no such operation
    │   │       ├── PayloadError            the payload does not decode to the expected shape
    │   │       ├── CapabilityTimeout       the backend did not answer in time
    │   │       └── CapabilityUnavailable   the backend (NATS, JetStream) failed or is full
    │   └── WorkerProtocolError     a sandbox worker sent a malformed or oversized frame
    ├── LatticeError                a lattice subject or message is malformed or refused
    │   ├── ControlRequestError     a control request body is malformed (names the field)
    │   ├── CommandRefused          a host refused a control command (``op``, ``reason``)
    │   └── InvocationError         an RPC Invocation/InvocationResponse is malformed
    │       ├── AntiForgeryError    its signed claims do not hold (``check`` says which)
    │       └── ChunkedInvocationError  its body went to the object store (unsupported)
    ├── FirmwareError               a microcontroller, its link or a firmware image failed
    │   ├── SMPFrameError           an SMP frame or message is malformed (names the problem)
    │   ├── DeviceUnavailable       the MCU is offline or did not answer in time
    │   ├── DeviceError             the MCU answered with an SMP error code (``rc``)
    │   ├── DeviceBusy              an update already runs on the MCU
    │   ├── ImageRejected           unsigned, untrusted, tampered or truncated (``reason``)
    │   └── UpdateFailed            an update ended without the new image (``outcome``)
    └── FleetError                  fleet enrollment, renewal or rollout failed
        ├── FleetDirError           the fleet directory or fleet.toml is missing or invalid
        ├── FleetRequestError       the fleet service refused a request (``code``, ``reason``)
        └── FleetStoreError         the fleet's JetStream KV / object store failed
"""

from __future__ import annotations

from pathlib import Path


class LatticeEdgeError(Exception):
    """Base class of every error Lattice Edge raises on purpose."""


# --- configuration and profiles -------------------------------------------------------


class ConfigError(LatticeEdgeError):
    """A configuration file, environment override or CLI value is invalid.

    ``key`` is the dotted key (``leaf.listen``) and ``source`` the file or variable it
    came from, so the message can say exactly what to fix.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | Path | None = None):
        self.key = key
        self.source = str(source) if source is not None else None
        where = []
        if key:
            where.append(f"key '{key}'")
        if self.source:
            where.append(f"in {self.source}")
        prefix = " ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ProfileError(LatticeEdgeError):
    """A hardware profile is unknown or its file is invalid."""


# --- identity ----------------------------------------------------------------------


class IdentityError(LatticeEdgeError):
    """Keys, JWTs or credentials are missing or invalid."""


class KeyFileError(IdentityError):
    """A seed file is missing, unreadable, or holds the wrong kind of key."""


class JWTError(IdentityError):
    """A JWT is malformed, badly signed, or carries the wrong claims."""


class CredsError(IdentityError):
    """A ``.creds`` file is missing or malformed."""


# --- leaf node ---------------------------------------------------------------------


class LeafError(LatticeEdgeError):
    """The local nats-server leaf node cannot be set up or run."""


class NatsServerNotFound(LeafError):
    """No nats-server binary was found in the configured path, PATH or the package."""


class LeafConfigError(LeafError):
    """The nats-server configuration cannot be rendered from the agent config."""


class LeafStartError(LeafError):
    """nats-server exited during start-up or did not become ready in time."""


class AgentStateError(LatticeEdgeError):
    """A running agent cannot be reached or reports something unexpected."""


class AgentRunningError(AgentStateError):
    """Another agent holds the data directory's lock; ``pid`` is its process id if known."""

    def __init__(self, message: str, *, pid: int | None = None):
        self.pid = pid
        super().__init__(message)


class StateError(LatticeEdgeError):
    """The agent cannot write (or read) its durable state: disk full, read-only, I/O error.

    Raised where an ``OSError`` from a state, cache or run-file write enters the project,
    so background work can tell "the disk refused" from a bug.
    """


class ForwardError(LatticeEdgeError):
    """Store-and-forward cannot run: the outbox stream on the leaf cannot be created or read,
    or the forwarder's consumer cannot be set up (JetStream off, its store full)."""


# --- wasm modules and claims ----------------------------------------------------------


class ModuleError(LatticeEdgeError):
    """A WebAssembly module cannot be used as an actor."""


class ModuleFormatError(ModuleError):
    """The bytes are not a well-formed WebAssembly binary."""


class ModuleImportError(ModuleError):
    """The module imports functions outside the allowed set."""


class UnsupportedFeatureError(ModuleError):
    """The module uses features that wasm3 0.5 cannot parse."""


class ModuleExportError(ModuleError):
    """The module lacks the exports a waPC actor needs (``__guest_call``)."""


class MemoryLimitError(ModuleError):
    """The module's minimum linear memory is larger than the profile's page budget."""


class ClaimsError(ModuleError):
    """The module's wascap claims do not allow it to run here."""


class UnsignedModuleError(ClaimsError):
    """The module carries no wascap JWT and unsigned modules are not allowed."""


class SignatureError(ClaimsError):
    """The wascap JWT's signature does not verify against its issuer."""


class UntrustedIssuerError(ClaimsError):
    """The wascap JWT was issued by an account that is not trusted (``issuer``, if known)."""

    def __init__(self, message: str, *, issuer: str = ""):
        self.issuer = issuer
        super().__init__(message)


class ClaimsExpiredError(ClaimsError):
    """The wascap JWT has expired or is not valid yet."""


class HashMismatchError(ClaimsError):
    """The module hash in the claims does not match the module's code."""


class LegacyHashError(HashMismatchError):
    """A ``wascap_revision`` < 3 token's hash does not match the module's code.

    Tampering and an old signer that hashed differently (wascap 0.9 hashed only parts of the
    module) cannot be told apart, so the code is unverified: it runs only when its SHA-256
    digest is pinned or legacy claims are allowed explicitly.
    """


# --- actors ------------------------------------------------------------------------


class ActorError(LatticeEdgeError):
    """An actor failed while being loaded or invoked."""


class GuestError(ActorError):
    """The guest reported an error through ``__guest_error``."""


class TrapError(ActorError):
    """The guest trapped; the message carries wasm3's trap reason."""


class InvocationTimeout(ActorError):
    """The invocation ran past its deadline and its worker was killed."""


class WorkerCrashed(ActorError):
    """The sandbox worker process died while serving a request."""


class ActorRefError(ActorError):
    """An actor reference cannot be parsed or its module cannot be fetched."""


class ActorQuarantined(ActorError):
    """The actor crashed or hung its worker too often and is no longer run."""


class HostCallError(ActorError):
    """A host call made by an actor cannot be served (no link, bad payload, provider error).

    Raised by host-call handlers; its message is what the guest sees as the host error.
    """


class WorkerProtocolError(ActorError):
    """A sandbox worker sent a frame that is oversized or does not decode."""


# --- capabilities ------------------------------------------------------------------


class CapabilityError(HostCallError):
    """A built-in capability (``agent.capabilities``) refused or failed a host call.

    It is a :class:`HostCallError`, so the sandbox hands its message to the guest as the
    host error without logging a traceback: these are the actor's mistakes or the
    backend's state, not bugs in the agent.
    """


class CapabilityDenied(CapabilityError):
    """The actor called a namespace its wascap claims do not list."""


class UnknownCapability(CapabilityError):
    """No built-in capability serves the namespace the actor called."""


class UnknownOperation(CapabilityError):
    """The capability has no operation of that name."""


class PayloadError(CapabilityError):
    """The payload is not msgpack, or not the shape the operation takes."""


class CapabilityTimeout(CapabilityError):
    """The backend did not answer in time (for example a messaging request)."""


class CapabilityUnavailable(CapabilityError):
    """The backend failed: NATS disconnected, JetStream unavailable, bucket full."""


# --- lattice -----------------------------------------------------------------------


class LatticeError(LatticeEdgeError):
    """A lattice subject, control request or RPC message is malformed or refused."""


class ControlRequestError(LatticeError):
    """A control-interface request body is malformed; the message names the field."""


class CommandRefused(LatticeError):
    """A host answered a control command with ``accepted: false``.

    ``op`` is the wire command (``la``, ``upd``, …) and ``reason`` the host's error text, so
    callers can tell refusals apart without parsing the message (which speaks of what was
    asked, in our words).
    """

    def __init__(self, message: str, *, op: str, reason: str):
        self.op = op
        self.reason = reason
        super().__init__(message)


class InvocationError(LatticeError):
    """An RPC ``Invocation`` or ``InvocationResponse`` is malformed or inconsistent."""


class AntiForgeryError(InvocationError):
    """An invocation failed an anti-forgery check.

    ``check`` names the check that failed (``"signature"``, ``"issuer"``, ``"hash"``, …;
    see :data:`agent.lattice.invocation.ANTI_FORGERY_CHECKS`), so callers and tests can tell
    the failures apart without parsing the message.
    """

    def __init__(self, message: str, *, check: str):
        self.check = check
        super().__init__(message)


class ChunkedInvocationError(InvocationError):
    """The invocation's body was moved to the JetStream object store ("chunked").

    The agent does not fetch chunked bodies: senders must stay under wasmCloud's chunking
    threshold (900 KiB).
    """


# --- firmware bridge -----------------------------------------------------------------


class FirmwareError(LatticeEdgeError):
    """A microcontroller on the firmware bridge, its link, or a firmware image failed."""


class SMPFrameError(FirmwareError):
    """An SMP frame, line or message is malformed; the message names the problem."""


class DeviceUnavailable(FirmwareError):
    """The MCU is offline (its port is absent) or did not answer within its retries."""


class DeviceError(FirmwareError):
    """The MCU answered a request with an SMP error code.

    ``rc`` is the code and ``group`` the management group that reported it (SMP v2), or
    None for an SMP v1 ``rc``.
    """

    def __init__(self, message: str, *, rc: int, group: int | None = None):
        self.rc = rc
        self.group = group
        super().__init__(message)


class DeviceBusy(FirmwareError):
    """The MCU is being updated; the request would disturb the update."""


class ImageRejected(FirmwareError):
    """A firmware image was refused before any of it was sent to the MCU.

    ``reason`` is one of ``unsigned``, ``untrusted``, ``tampered``, ``truncated``,
    ``malformed`` or ``no_trusted_keys``.
    """

    def __init__(self, message: str, *, reason: str):
        self.reason = reason
        super().__init__(message)


class UpdateFailed(FirmwareError):
    """A firmware update ended without the new image running (and confirmed, if asked).

    ``outcome`` is ``rolled_back`` (MCUboot reverted to the old image), ``lost`` (the MCU
    did not come back) or ``failed`` (any other step failed; the old image still runs or
    the upload can be resumed).
    """

    def __init__(self, message: str, *, outcome: str, step: str = ""):
        self.outcome = outcome
        self.step = step
        super().__init__(message)


# --- fleet -------------------------------------------------------------------------


class FleetError(LatticeEdgeError):
    """Fleet enrollment, credential renewal or rollout failed."""


class FleetDirError(FleetError):
    """The fleet directory is missing, incomplete, or its ``fleet.toml`` is invalid."""


class FleetRequestError(FleetError):
    """A request to the fleet service is malformed or was refused.

    ``code`` is the HTTP-like status the service answers with (400 malformed, 403 refused,
    404 unknown, 409 conflict, 410 expired, 500 internal) and ``reason`` a stable word
    (``"revoked"``, ``"token-used"``, …) that callers test instead of parsing the message.
    """

    def __init__(self, message: str, *, code: int = 400, reason: str = "bad-request"):
        self.code = code
        self.reason = reason
        super().__init__(message)


class FleetStoreError(FleetError):
    """The fleet's state in the hub's JetStream (KV bucket, object store) is unavailable."""
