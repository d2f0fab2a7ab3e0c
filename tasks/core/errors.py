"""Every error a user can fix, under one root the CLI catches.

``chainsignal`` prints a :class:`ChainsignalError` as one ``chainsignal: error:`` line and exits 2;
anything else is a bug and keeps its traceback. Each class also keeps the builtin base it had
before the root existed (``ValueError``, ``RuntimeError``, ``LookupError``) so callers that
catch those still do. Messages are one line and never hold a secret.
"""

from __future__ import annotations


class ChainsignalError(Exception):
    """Root of the errors a user can fix: a setting, an endpoint, a file, a service."""


# ----------------------------------------------------------------------------- settings and data contracts
class SettingsError(ChainsignalError, ValueError):
    """A setting has a bad value; the message is one line naming the setting."""


class SchemaError(ChainsignalError, ValueError):
    """A frame does not match its dataset's contract."""


class StorageError(ChainsignalError, RuntimeError):
    """A store that cannot be used: an object store as configured, a full disk; one line naming the setting or file."""


class DiskFullError(StorageError):
    """No space left (or the disk quota spent) while writing a file; one line naming it. The half-written
    temporary file is removed, nothing is committed, and a rerun resumes once there is room."""


class DataError(ChainsignalError, ValueError):
    """Input data breaks a rule (a duplicate candle, a negative price, a day not yet closed); nothing is written."""


class InputError(ChainsignalError, ValueError):
    """A command's own input is wrong (an end date before the start, an unknown option value)."""


class IngestError(ChainsignalError, RuntimeError):
    """An ingest inside daily-ingest failed; the message names which one and why, in one line."""


class NotFoundError(ChainsignalError, LookupError):
    """Something a command needs does not exist yet (a dataset, a run, a block); the message says what to run."""


# ----------------------------------------------------------------------------- outside systems
class HttpGiveUp(ChainsignalError, RuntimeError):
    """Retries exhausted, or the endpoint is unreachable; one line, no secret."""


class RpcError(ChainsignalError, RuntimeError):
    """A JSON-RPC call failed for good. The message is one line and holds no secret."""


class RpcAuthError(RpcError):
    """The endpoint refused the key (HTTP 401/403)."""


class RpcQuotaError(RpcError):
    """The provider's (HTTP 402) or our own daily credit budget is spent: stop for the day."""


class RpcBudgetError(RpcQuotaError):
    """Our own daily credit budget (``rpc.daily_credit_budget``) is spent."""


class ChainMismatchError(ChainsignalError, RuntimeError):
    """The node serves another chain than the lake holds (chain id, genesis or hash chain); one line naming both."""


class RpcUnreachableError(RpcError):
    """No answer from the endpoint (connection refused, DNS, TLS)."""


class PriceSourceError(ChainsignalError, RuntimeError):
    """A price source cannot serve a request; one line, no secret."""


class SourceError(ChainsignalError, RuntimeError):
    """A social source failed; one line, no secret."""


class SourceBlockedError(SourceError):
    """The platform refuses to serve this source (e.g. X blocks logged-out scraping)."""


class AllSourcesFailedError(SourceError):
    """Every configured social source failed (or was blocked) on at least one day."""


# ----------------------------------------------------------------------------- local processes and services
class LocalNodeError(ChainsignalError, RuntimeError):
    """The embedded local Ethereum node (anvil) could not start or be seeded."""


class LaunchError(ChainsignalError, RuntimeError):
    """The multi-process run failed; the message is one line with torchrun's exit code and the last error."""


class ServiceError(ChainsignalError, RuntimeError):
    """A local service did not start or stop; one line."""


class SetupError(ChainsignalError, RuntimeError):
    """Setup could not complete; one line."""
