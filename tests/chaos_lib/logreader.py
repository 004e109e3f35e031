"""An independent reader of tally's vote log and vote records, written from
the format's description (log/vlog_file.c's header comment, log/record.h),
not from its code, so a bug there cannot hide here.

votes.log frame, little-endian:
    u32 len | u32 checksum | u16 partition | u16 kind | payload[len]
    checksum = low 32 bits of XXH3-64(payload, seed = len | partition << 32 | kind << 48)
    kind 0: a record of the partition; kind 1 (log format 3): a commit frame,
    partition 0, payload u64 = the records of the write it ends
record v1 (the payload, also the Kafka message value):
    u8 version=1 | u8 flags | u64 ts_ms | u8 poll_len | poll |
    u8 option_len | option | u16 voter_len | voter

XXH3 is not in Python's standard library and is not reimplemented here: the
Debian package python3-xxhash (scripts/install-deps) provides it. Without it
checksums are not verified (HAVE_XXHASH says so) and the reader relies on
structure: lengths, partition, reserved field and a record that decodes
exactly to the frame's length."""
import os
import struct
import sys

try:
    import xxhash  # python3-xxhash
except ImportError:  # an interpreter other than Debian's (pyenv): same ABI?
    _deb = "/usr/lib/python3/dist-packages"
    if os.path.isdir(os.path.join(_deb, "xxhash")) and sys.version_info[:2] == (3, 11):
        sys.path.append(_deb)
        try:
            import xxhash
        except ImportError:
            xxhash = None
        finally:
            sys.path.remove(_deb)
    else:
        xxhash = None

HAVE_XXHASH = xxhash is not None
FRAME_HDR = 12
FRAME_MAX_PAYLOAD = 65536
KIND_RECORD, KIND_COMMIT = 0, 1
RECORD_V1, RECORD_V2 = 1, 2
TYPE_VOTE, TYPE_CONTROL = 1, 2
F_VOTER_HMAC, F_IDEM = 0x01, 0x02


class Record:
    __slots__ = ("partition", "offset", "end", "ts_ms", "flags", "poll", "option", "voter")

    def __init__(self, partition, offset, end, ts_ms, flags, poll, option, voter):
        self.partition, self.offset, self.end = partition, offset, end
        self.ts_ms, self.flags = ts_ms, flags
        self.poll, self.option, self.voter = poll, option, voter

    def key(self):
        return (self.poll, self.option, self.voter)

    def __repr__(self):
        return f"Record(p{self.partition}@{self.offset} {self.poll}/{self.option}/{self.voter})"


def decode_any(payload):
    """The checker's own reader of tally's records (log/record.h), written
    from the format, not from the C code. Returns
      ("vote", ts_ms, flags, poll, option, voter or None, idempotency key or None)
      ("control", kind, ts_ms, seq, at_ms, poll, body bytes)
    or raises ValueError. A hashed voter (F_VOTER_HMAC) comes back as hex."""
    n = len(payload)
    if n >= 14 and payload[0] == RECORD_V1:
        flags, p = 0, 2
    elif n >= 2 and payload[0] == RECORD_V2 and payload[1] == TYPE_VOTE and n >= 15:
        flags, p = payload[2], 3
        if flags & ~(F_VOTER_HMAC | F_IDEM):
            raise ValueError("unknown vote flags")
    elif n >= 2 and payload[0] == RECORD_V2 and payload[1] == TYPE_CONTROL and n >= 31:
        kind = payload[2]
        if kind not in (1, 2):
            raise ValueError("unknown control kind")
        ts, seq, at = struct.unpack_from("<QQQ", payload, 3)
        p = 27
        plen = payload[p]
        p += 1
        if plen == 0 or plen > 64 or p + plen + 4 > n:
            raise ValueError("bad poll length")
        poll = payload[p:p + plen].decode("ascii")
        p += plen
        (blen,) = struct.unpack_from("<I", payload, p)
        p += 4
        if blen > 60000 or p + blen != n:
            raise ValueError("bad body length")
        return ("control", kind, ts, seq, at, poll, bytes(payload[p:]))
    else:
        raise ValueError("bad record header or version")
    (ts,) = struct.unpack_from("<Q", payload, p)
    p += 8
    plen = payload[p]
    p += 1
    if plen == 0 or plen > 64 or p + plen + 1 > n:
        raise ValueError("bad poll length")
    poll = payload[p:p + plen].decode("ascii")
    p += plen
    olen = payload[p]
    p += 1
    if olen == 0 or olen > 64 or p + olen + 2 > n:
        raise ValueError("bad option length")
    option = payload[p:p + olen].decode("ascii")
    p += olen
    (vlen,) = struct.unpack_from("<H", payload, p)
    p += 2
    if vlen > 256 or p + vlen > n or (flags & F_VOTER_HMAC and vlen != 16):
        raise ValueError("bad voter length")
    raw = payload[p:p + vlen]
    p += vlen
    voter = (raw.hex() if flags & F_VOTER_HMAC else raw.decode("utf-8")) if vlen else None
    key = None
    if flags & F_IDEM:
        if p >= n:
            raise ValueError("missing idempotency key")
        klen = payload[p]
        p += 1
        if klen == 0 or klen > 64 or p + klen > n:
            raise ValueError("bad idempotency key length")
        key = payload[p:p + klen].decode("ascii")
        p += klen
    if p != n:
        raise ValueError("trailing bytes after the record")
    return ("vote", ts, flags, poll, option, voter, key)


def decode_record(payload):
    """A vote: (ts_ms, flags, poll, option, voter or None); None for a
    control record; raises ValueError for anything else."""
    r = decode_any(payload)
    return None if r[0] == "control" else r[1:6]


def frame_checksum(payload, partition, kind=KIND_RECORD):
    seed = len(payload) | (partition << 32) | (kind << 48)
    return xxhash.xxh3_64_intdigest(payload, seed=seed) & 0xFFFFFFFF


class Scan:
    """The result of reading a votes.log image.
    records: every intact frame up to the first bad one, in file order.
    valid_end: the byte offset after the last of them.
    bad: None, or (offset, why) of the first frame that is not intact.
    intact_after: intact frames found after the bad spot by resynchronising
    (a torn tail has none; damage does)."""

    def __init__(self):
        self.records, self.valid_end, self.bad, self.intact_after = [], 0, None, 0
        self.controls = []  # (partition, offset, decode_any tuple) of control records
        self.commits = 0  # commit frames (format 3: one ends each write)
        self.last_commit_end = 0  # the offset after the last commit frame (0: none)
        # Offsets of commit frames counting more records than lie between
        # them and the commit frame before: records of an acknowledged write
        # gone. (Fewer is no fault: a kill -9 within a write can leave some
        # of its records whole and no commit frame; they stay, unacknowledged,
        # and the next commit frame counts its own write only.)
        self.commit_mismatch = []


def check_frame(data, off, npartitions):
    """Returns (total_len, partition, payload) of the intact frame at off
    (partition None for a commit frame), or (None, why)."""
    if len(data) - off < FRAME_HDR:
        return None, "incomplete header"
    length, csum, part, kind = struct.unpack_from("<IIHH", data, off)
    if length == 0 or length > FRAME_MAX_PAYLOAD:
        return None, "bad length"
    if part >= npartitions or kind not in (KIND_RECORD, KIND_COMMIT) or (
            kind == KIND_COMMIT and (part != 0 or length != 8)):
        return None, "bad header"
    if len(data) - off - FRAME_HDR < length:
        return None, "incomplete payload"
    payload = bytes(data[off + FRAME_HDR:off + FRAME_HDR + length])
    if HAVE_XXHASH and frame_checksum(payload, part, kind) != csum:
        return None, "checksum mismatch"
    if kind == KIND_COMMIT:
        return FRAME_HDR + length, None, payload
    try:
        decode_record(payload)
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"undecodable record ({e})"
    return FRAME_HDR + length, part, payload


def scan_bytes(data, npartitions, resync=True, start=0):
    """start: a frame boundary to begin at (bytes before it already read)."""
    s = Scan()
    off = start
    in_write = 0  # frames since the last commit frame
    seen_commit = False  # the first may follow a format 2 log's frames, or a start within a write
    while off < len(data):
        r = check_frame(data, off, npartitions)
        if r[0] is None:
            s.bad = (off, r[1])
            break
        n, part, payload = r
        if part is None:
            s.commits += 1
            if seen_commit and struct.unpack("<Q", payload)[0] > in_write:
                s.commit_mismatch.append(off)
            s.last_commit_end = off + n
            seen_commit = True
            in_write = 0
            off += n
            continue
        in_write += 1
        vote = decode_record(payload)
        if vote is None:
            s.controls.append((part, off, decode_any(payload)))
        else:
            s.records.append(Record(part, off, off + n, *vote))
        off += n
    s.valid_end = off
    if s.bad and resync:
        # Any intact frame starting after the bad spot means damage, not a
        # torn tail. Without checksums a false positive is possible in
        # principle; with them (2^-32 a candidate) it is not a concern.
        p = s.bad[0] + 1
        while p + FRAME_HDR <= len(data):
            r = check_frame(data, p, npartitions)
            if r[0] is not None:
                s.intact_after += 1
                p += r[0]
            else:
                p += 1
    return s


def read_log(path, npartitions):
    with open(path, "rb") as f:
        data = f.read()
    return data, scan_bytes(data, npartitions)


def frame_bytes(payload, partition):
    """Encodes one frame (for the checker's self-test; needs xxhash)."""
    return struct.pack("<IIHH", len(payload), frame_checksum(payload, partition), partition, 0) + payload


def commit_bytes(records):
    """Encodes a commit frame ending a write of `records` frames."""
    payload = struct.pack("<Q", records)
    return struct.pack("<IIHH", 8, frame_checksum(payload, 0, KIND_COMMIT), 0, KIND_COMMIT) + payload


def encode_record(ts_ms, poll, option, voter, version=RECORD_V2, key=None):
    """A vote record, v2 (what tally writes) or v1 (what older tally wrote)."""
    v = (voter or "").encode()
    head = bytes([RECORD_V1, 0]) if version == RECORD_V1 else bytes([RECORD_V2, TYPE_VOTE, F_IDEM if key else 0])
    rec = (head + struct.pack("<Q", ts_ms) + bytes([len(poll)]) + poll.encode()
           + bytes([len(option)]) + option.encode() + struct.pack("<H", len(v)) + v)
    if key:
        rec += bytes([len(key)]) + key.encode()
    return rec


CONTROL_DEFINE, CONTROL_FINAL = 1, 2


def encode_control(kind, seq, poll, body=b"", at_ms=0, ts_ms=1):
    """A control record (log/record.h, type 2): DEFINE (body: the poll's
    definition as JSON) or FINAL (at_ms: the cut)."""
    if isinstance(body, str):
        body = body.encode()
    return (bytes([RECORD_V2, TYPE_CONTROL, kind]) + struct.pack("<QQQ", ts_ms, seq, at_ms)
            + bytes([len(poll)]) + poll.encode() + struct.pack("<I", len(body)) + body)


def append_frames(path, payload, partitions):
    """Appends payload as one frame to each of the partitions (a stopped
    log's votes.log, as the history writer broadcasts a control record)."""
    with open(path, "ab") as f:
        for p in partitions:
            f.write(frame_bytes(payload, p))
