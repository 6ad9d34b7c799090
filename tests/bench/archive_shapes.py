"""Hostile (and one honest) archive shapes for tests/bench/archivemem.sh, written into a directory.

Usage: python3 archive_shapes.py DIR
Prints one line per shape: "<file> <maxSize> <expected outcome>". Zips are assembled record by
record so any part can lie; tarballs are written with GNU long-name and PAX records by hand, so
their declared sizes are what the reader meets first. Nothing is fetched: the files are served
from loopback.
"""

import os
import struct
import sys
import zlib

MiB = 1 << 20


def crc(data):
    return zlib.crc32(data) & 0xFFFFFFFF


class Zip:
    """Local entries are written straight to the file; central records are kept (small)."""

    def __init__(self, path):
        self.f = open(path, "wb")
        self.central = bytearray()
        self.records = 0

    def stored(self, name, data=b""):
        return self.entry(name, data, 0, data, len(data), crc(data))

    def entry(self, name, stored, method, data, size, checksum):
        offset = self.f.tell()
        self.f.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, checksum, len(stored), size, len(name), 0))
        self.f.write(name)
        self.f.write(stored)
        self.record(name, method, len(stored), size, checksum, offset)

    def record(self, name, method, compressed, size, checksum, offset):
        self.central += struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 3 << 8 | 20, 20, 0, method, 0, 0, checksum, compressed, size,
            len(name), 0, 0, 0, 0, 0o100644 << 16, offset,
        )
        self.central += name
        self.records += 1

    def finish(self, count=None, size=None, zip64=False):
        count = self.records if count is None else count
        size = len(self.central) if size is None else size
        offset = self.f.tell()
        self.f.write(self.central)
        # Past 65,535 records or 4 GiB only the zip64 end record can say it, as zip tools write.
        zip64 = zip64 or count > 0xFFFF or size > 0xFFFFFFFF
        if zip64:
            at = self.f.tell()
            self.f.write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset))
            self.f.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, at, 1))
            count16, size32, offset32 = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
        else:
            count16, size32, offset32 = count & 0xFFFF, size, offset
        self.f.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count16, count16, size32, offset32, 0))
        self.f.close()


def deflated_zeros(n):
    """Raw deflate of n zero bytes, streamed."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = bytearray()
    chunk = bytes(MiB)
    for _ in range(n // MiB):
        out += z.compress(chunk)
    return bytes(out + z.flush())


def tar_header(name, size, kind=b"0"):
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156:157] = kind
    h[257:265] = b"ustar  \0"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


class TarGz:
    def __init__(self, path):
        self.f = open(path, "wb")
        self.z = zlib.compressobj(6, zlib.DEFLATED, 31)

    def write(self, data):
        self.f.write(self.z.compress(data))

    def record(self, name, data, kind=b"0"):
        self.write(tar_header(name, len(data), kind))
        self.write(data)
        self.write(bytes(-len(data) % 512))

    def zeros(self, name, size, kind=b"0"):
        """An entry of `size` zero bytes (or a long-name/PAX record of that size), streamed."""
        self.write(tar_header(name, size, kind))
        chunk = bytes(MiB) if kind == b"0" else b"a" * MiB
        left = size
        while left:
            n = min(left, MiB)
            self.write(chunk[:n])
            left -= n
        self.write(bytes(-size % 512))

    def finish(self):
        self.write(bytes(1024))
        self.f.write(self.z.flush())
        self.f.close()


def main(out):
    shapes = []

    def shape(name, max_size, expected):
        shapes.append((name, max_size, expected))
        return os.path.join(out, name)

    for n in (200_000, 700_000):
        z = Zip(shape(f"zip-{n // 1000}k-empty.zip", "24MiB" if n == 200_000 else "64MiB", "refused: declared count"))
        for i in range(n):
            z.stored(b"f%07d" % i)
        z.finish()
    z = Zip(shape("zip-700k-count-says-10.zip", "64MiB", "refused: directory size"))
    for i in range(700_000):
        z.stored(b"f%07d" % i)
    z.finish(count=10)
    z = Zip(shape("zip-700k-count-and-size-say-10.zip", "64MiB", "refused: more records than declared"))
    for i in range(700_000):
        z.stored(b"f%07d" % i)
    z.finish(count=10, size=10 * (46 + 8))
    z = Zip(shape("zip-count-says-9999-holds-10.zip", "24MiB", "refused: record missing"))
    for i in range(10):
        z.stored(b"f%07d" % i)
    z.finish(count=9_999)
    z = Zip(shape("zip64-declares-4g-entries.zip", "24MiB", "refused: zip64 declared count"))
    z.stored(b"a.yaml", b"a: 1\n")
    z.finish(count=4_000_000_000, zip64=True)
    z = Zip(shape("zip-10k-deep-1k-names.zip", "24MiB", "refused: implied directories"))
    for i in range(10_000):
        z.stored(b"%05d/" % i + b"d/" * 506 + b"x")
    z.finish()
    z = Zip(shape("zip-60k-name.zip", "24MiB", "refused: name length"))
    z.stored(b"a" * 60_000)
    z.finish()
    bomb = deflated_zeros(1 << 30)
    z = Zip(shape("zip-1g-deflate-bomb.zip", "24MiB", "refused: declared size"))
    z.entry(b"zeros", bomb, 8, None, 1 << 30, crc(bytes(0)))
    z.finish()
    z = Zip(shape("zip-1g-deflate-bomb-says-10.zip", "24MiB", "refused: inflated size"))
    z.entry(b"zeros", bomb, 8, None, 10, 0)
    z.finish()
    z = Zip(shape("zip-10k-files-accepted.zip", "24MiB", "accepted"))
    for i in range(10_000):
        z.stored(b"dir%03d/file%05d.yaml" % (i % 100, i), os.urandom(1024))
    z.finish()

    t = TarGz(shape("tgz-64m-long-name.tgz", "24MiB", "refused: GNU long-name size"))
    t.zeros(b"././@LongLink", 64 * MiB, b"L")
    t.record(b"fine", b"x")
    t.finish()
    t = TarGz(shape("tgz-64m-pax-header.tgz", "24MiB", "refused: PAX header size"))
    t.zeros(b"././@PaxHeader", 64 * MiB, b"x")
    t.record(b"fine", b"x")
    t.finish()
    t = TarGz(shape("tgz-10k-deep-1k-names.tgz", "24MiB", "refused: implied directories"))
    for i in range(10_000):
        name = b"%05d/" % i + b"d/" * 506 + b"x"
        t.record(b"././@LongLink", name + b"\0", b"L")
        t.record(b"short", b"")
    t.finish()
    t = TarGz(shape("tgz-200k-empty.tgz", "24MiB", "refused: entry count"))
    for i in range(200_000):
        t.record(b"f%07d" % i, b"")
    t.finish()
    t = TarGz(shape("tgz-1g-bomb.tgz", "24MiB", "refused: unpacked size"))
    t.zeros(b"zeros", 1 << 30)
    t.finish()
    t = TarGz(shape("tgz-10k-files-accepted.tgz", "24MiB", "accepted"))
    for i in range(10_000):
        t.record(b"dir%03d/file%05d.yaml" % (i % 100, i), os.urandom(1024))
    t.finish()

    for name, max_size, expected in shapes:
        print(name, max_size, expected)


if __name__ == "__main__":
    main(sys.argv[1])
