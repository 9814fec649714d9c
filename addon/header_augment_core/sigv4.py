"""A flow signed by an aws-sigv4 provider: the request exactly as mitmproxy will send it, once every other addon has
changed it. Its host is the destination mitmproxy connects to (`:authority` on HTTP/2, the Host header on HTTP/1),
its query is sent in the canonical encoding it is signed with, and a client's own signature goes first."""

from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

from mitmproxy import http
from mitmproxy.net.http import url

from .kinds.aws_sigv4 import ADDED, SIGNATURE_HEADERS, SIGNATURE_QUERY, Frozen, Signer
from .snapshot import Fields, Snapshot, marker, probes_of

# A body larger than this is hashed on a worker thread (hashlib lets go of the GIL): other flows go on meanwhile.
HASH_ON_LOOP = 64 * 1024
# Never signed: they are the next hop's (RFC 9110 §7.6.1), or the proxy's, and may change on the way.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# Sent as the client wrote it, not signed: given a Date, botocore signs it in place of X-Amz-Date (rewritten to the
# signing time), which verifiers that take the time from X-Amz-Date refuse (moto); AWS reads X-Amz-Date first. The
# others are those botocore never signs (its SIGNED_HEADERS_BLACKLIST): not handed to it, each would cost it a scan
# of its headers at every lookup it makes.
UNSIGNED = HOP_BY_HOP | {
    b"date",
    b"user-agent",
    b"expect",
    b"x-amzn-trace-id",
    b"baggage",
    b"traceparent",
    b"tracestate",
}
# The names botocore adds as sent on HTTP/1 and (lower-case) on HTTP/2, encoded once; those masked and scrubbed.
_ENCODED = {name: (name.encode(), name.lower().encode()) for name in ADDED}
_AUTHORIZATION = (b"authorization", marker("Authorization"))
_TOKEN = (b"x-amz-security-token", marker("X-Amz-Security-Token"))


# X-Amz-Content-SHA256 for an aws-chunked body whose chunks are not signed, with a checksum in a trailer: what
# boto3/botocore >= 1.36 and the AWS CLI send over HTTPS by default. The literal is signed in place of a payload hash,
# and the body, framing and all, goes on as it came (S3 takes the framing off).
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
_STREAMING_UNSIGNED_TRAILER = STREAMING_UNSIGNED_TRAILER.encode()
# The forms whose every chunk carries a signature chained from the request's (SigV4, or SigV4a's ECDSA): ours
# replaces the request's, so the client's chunk signatures would no longer verify. Named in the refusal; another
# STREAMING- value is refused without being repeated.
SIGNED_CHUNKS = frozenset(
    {
        b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        b"STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        b"STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
    }
)


class Unsignable(Exception):
    """The request cannot be signed as it will be sent; the message says why (never a credential or a value the
    client made up), `status` is the answer's: 400 where the client can send it otherwise, 502 where it cannot."""

    def __init__(self, why: str, status: int = 502) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True, slots=True)
class Prepared:
    method: str
    url: str
    headers: list[tuple[str, str]]  # those signed: the request's, without hop-by-hop and proxy ones
    body: bytes | None  # None: streamed, signed as UNSIGNED-PAYLOAD, or not needed (`streaming`)
    kept: Fields  # the request's fields without a client's own signature
    h2: bool
    payload_hash: bool  # the client sent X-Amz-Content-SHA256: ours goes in its place (services other than S3)
    streaming: str | None = None  # STREAMING_UNSIGNED_TRAILER: signed as the payload, the body never read


def prepare(request: http.Request, streamed: bool) -> Prepared:
    """Make the request what will be signed (its host header, its query) and collect what botocore signs."""
    host = url.hostport(request.scheme, request.host, request.port)
    h2 = request.is_http2 or request.is_http3
    if request.host_header != host or (h2 and request.headers.get("host", host) != host):
        request.host_header = host  # on HTTP/2 both :authority and a Host header beside it
    path, mark, query = request.path.partition("?")
    if mark:
        canonical = _canonical_query(query)
        if canonical != query:
            request.path = f"{path}?{canonical}" if canonical else path
    fields = request.headers.fields
    kept = tuple(f for f in fields if f[0].lower() not in SIGNATURE_HEADERS)
    declared = None  # the client's own X-Amz-Content-SHA256, among the signature headers `kept` is without
    if len(kept) < len(fields):
        for name, value in fields:
            if name.lower() == b"x-amz-content-sha256":
                declared = value
    streaming = None
    if declared is not None and declared.startswith(b"STREAMING-"):
        if declared != _STREAMING_UNSIGNED_TRAILER:
            raise Unsignable(_signed_chunks(declared), 400)
        streaming = STREAMING_UNSIGNED_TRAILER
    listed = set()
    chunked = False
    for name, value in kept:
        low = name.lower()
        if low == b"connection":
            listed |= {token.strip().lower() for token in value.split(b",")}
        elif low == b"content-encoding" and b"aws-chunked" in value.lower():
            chunked = True
    if chunked and streaming is None:
        # Signed as a hash of the framed body, or as UNSIGNED-PAYLOAD, S3 would store the framing with the object.
        raise Unsignable(
            "Content-Encoding aws-chunked without X-Amz-Content-SHA256 STREAMING-UNSIGNED-PAYLOAD-TRAILER: the "
            "signature would not say the body is framed",
            400,
        )
    signed = [("host", host)] if h2 else []
    try:
        for name, value in kept:
            low = name.lower()
            if low in UNSIGNED or low in listed or low.startswith(b"proxy-") or (h2 and low == b"host"):
                continue  # on HTTP/2 a Host header beside :authority holds the same value (host_header set both)
            signed.append((name.decode("ascii"), value.decode("utf-8")))
    except UnicodeDecodeError:
        raise Unsignable("a header name or value is not valid UTF-8") from None
    body = None if streamed or streaming else (request.raw_content or b"")
    target = f"{request.scheme}://{host}{request.path}"
    return Prepared(request.method, target, signed, body, kept, h2, declared is not None, streaming)


def signed_with(request: http.Request, access_key_id: bytes) -> bool:
    """Whether the client signed `request` with `access_key_id` (its Authorization's Credential, or a presigned
    URL's X-Amz-Credential): an aws-sigv4 entry with a placeholder signs again only what was signed with it."""
    for name, value in request.headers.fields:
        if name.lower() == b"authorization" and b"Credential=" + access_key_id + b"/" in value:
            return True
    target = request.data.path
    return b"?" in target and (
        b"X-Amz-Credential=" + access_key_id + b"%2F" in target or b"X-Amz-Credential=" + access_key_id + b"/" in target
    )


def _signed_chunks(declared: bytes) -> str:
    value = declared.decode() if declared in SIGNED_CHUNKS else "another STREAMING- form"
    return (
        f"X-Amz-Content-SHA256 {value}: the client signed each chunk of the body, and the proxy, whose signature "
        "replaces the client's, does not sign chunks; upload over https:// with payload signing off (the AWS SDKs' "
        "default there), or turn chunked encoding off (AWS SDK for Java: S3Configuration chunkedEncodingEnabled(false))"
    )


def _canonical_query(query: str) -> str:
    """The query as AWS reads it (form-decoded), encoded as SigV4 canonicalises it, without a presigned URL's
    signature parameters: what is sent is then exactly what botocore signs."""
    pairs = []
    for pair in query.split("&"):
        if not pair:
            continue
        key, equals, value = pair.partition("=")
        key = unquote_plus(key)
        if key.lower() in SIGNATURE_QUERY:
            continue
        encoded = quote(key, safe="-_.~")
        pairs.append(f"{encoded}={quote(unquote_plus(value), safe='-_.~')}" if equals else encoded)
    return "&".join(pairs)


def sign(signer: Signer, credentials: Frozen, prepared: Prepared) -> tuple[Fields, Snapshot]:
    """The request's new fields, and a snapshot of the credentials in them (what the flow masks and answers are
    scrubbed of once it has been sent). Pure: safe on a worker thread."""
    added = signer.sign(
        credentials,
        prepared.method,
        prepared.url,
        prepared.headers,
        prepared.body,
        prepared.payload_hash,
        prepared.streaming,
    )
    # `kept` holds none of the names botocore adds (SIGNATURE_HEADERS are all of them): appended, nothing replaced.
    column = 1 if prepared.h2 else 0
    encoded = tuple((_ENCODED[name][column], value.encode()) for name, value in added)
    token = encoded[2][1] if credentials.token else None  # in the order Signer lists them: Authorization first
    return prepared.kept + encoded, _of_this_request(encoded[0][1], token)


def _of_this_request(authorization: bytes, token: bytes | None) -> Snapshot:
    """What `Snapshot.build` makes for masking and scrubbing, for this request's Authorization and the session token
    only (a small part of its cost: this is made for every request, and the values are long, unique and need no
    scheme word taken off)."""
    pairs = [(*_AUTHORIZATION, authorization)]
    if token:
        pairs.append((*_TOKEN, token))
    lowered = tuple(low for low, _, _ in pairs)
    return Snapshot(
        fields=(),
        fields_h2=(),
        lowered=lowered,
        names=frozenset(lowered),
        fetched_at=0.0,
        masks={(low, value): stand_in for low, stand_in, value in pairs},
        secrets=tuple(sorted(((value, stand_in) for _, stand_in, value in pairs), key=lambda pair: -len(pair[0]))),
        probes=probes_of([value for _, _, value in pairs]),
    )
