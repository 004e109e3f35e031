"""An independent reader of tally's vote log and vote records, written from
the format's description (log/vlog_file.c's header comment, log/record.h),
not from its code, so a bug there cannot hide here.

votes.log frame, little-endian:
    u32 len | u32 checksum | u16 partition | u16 0 | payload[len]
    checksum = low 32 bits of XXH3-64(payload, seed = len | partition << 32)
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
RECORD_VERSION = 1


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


def decode_record(payload):
    """Returns (ts_ms, flags, poll, option, voter or None), or raises ValueError."""
    if len(payload) < 14 or payload[0] != RECORD_VERSION:
        raise ValueError("bad record header or version")
    flags = payload[1]
    (ts,) = struct.unpack_from("<Q", payload, 2)
    p = 10
    plen = payload[p]
    p += 1
    if plen == 0 or plen > 64 or p + plen + 1 > len(payload):
        raise ValueError("bad poll length")
    poll = payload[p:p + plen].decode("ascii")
    p += plen
    olen = payload[p]
    p += 1
    if olen == 0 or olen > 64 or p + olen + 2 > len(payload):
        raise ValueError("bad option length")
    option = payload[p:p + olen].decode("ascii")
    p += olen
    (vlen,) = struct.unpack_from("<H", payload, p)
    p += 2
    if vlen > 256 or p + vlen != len(payload):
        raise ValueError("bad voter length")
    voter = payload[p:p + vlen].decode("utf-8") if vlen else None
    return ts, flags, poll, option, voter


def frame_checksum(payload, partition):
    seed = len(payload) | (partition << 32)
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


def check_frame(data, off, npartitions):
    """Returns (total_len, partition, payload) of the intact frame at off, or
    (None, why)."""
    if len(data) - off < FRAME_HDR:
        return None, "incomplete header"
    length, csum, part, zero = struct.unpack_from("<IIHH", data, off)
    if length == 0 or length > FRAME_MAX_PAYLOAD:
        return None, "bad length"
    if part >= npartitions or zero != 0:
        return None, "bad header"
    if len(data) - off - FRAME_HDR < length:
        return None, "incomplete payload"
    payload = bytes(data[off + FRAME_HDR:off + FRAME_HDR + length])
    if HAVE_XXHASH and frame_checksum(payload, part) != csum:
        return None, "checksum mismatch"
    try:
        decode_record(payload)
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"undecodable record ({e})"
    return FRAME_HDR + length, part, payload


def scan_bytes(data, npartitions, resync=True, start=0):
    """start: a frame boundary to begin at (bytes before it already read)."""
    s = Scan()
    off = start
    while off < len(data):
        r = check_frame(data, off, npartitions)
        if r[0] is None:
            s.bad = (off, r[1])
            break
        n, part, payload = r
        ts, flags, poll, option, voter = decode_record(payload)
        s.records.append(Record(part, off, off + n, ts, flags, poll, option, voter))
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


def encode_record(ts_ms, poll, option, voter):
    v = (voter or "").encode()
    return (bytes([RECORD_VERSION, 0]) + struct.pack("<Q", ts_ms) + bytes([len(poll)]) + poll.encode()
            + bytes([len(option)]) + option.encode() + struct.pack("<H", len(v)) + v)
