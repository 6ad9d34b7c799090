//! The gzip stream of every artifact, compressed with deflate states taken from a small pool.
//!
//! A new deflate state allocates and zeroes about 300 KiB (window, hash chains, symbol buffer).
//! Most sources fetch a few KiB, so setting up the compressor cost more than compressing: in a
//! profile of 2,000 first reconciles of 16 KiB documents it was 9.5 % of the controller's CPU,
//! most of it page faults, as blocks that large are mapped fresh on every allocation
//! (`bin/src/limits.rs`). A reset state writes the same bytes as a new one, so the pool changes
//! no artifact's digest.

use std::io::{self, Write};
use std::sync::Mutex;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Compression level: zlib's default, the level the `gzip` CLI uses.
const LEVEL: u32 = 6;

/// The header `flate2::GzBuilder::new().mtime(0)` writes at level 6: no name, no comment, no
/// timestamp, no extra flags, "unknown" operating system (so the bytes are the same everywhere).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Idle deflate states kept for reuse: packaging runs on the runtime's worker threads (and the
/// blocking pool for archives), so a few cover every packaging at once; more are freed on return.
const IDLE_STATES: usize = 4;

/// Room for compressed output between writes to the sink (flate2's own writer uses the same).
const OUTPUT_BUFFER: usize = 32 * 1024;

static IDLE: Mutex<Vec<Compress>> = Mutex::new(Vec::new());

fn take_state() -> Compress {
    let reused = IDLE.lock().unwrap_or_else(|p| p.into_inner()).pop();
    reused.unwrap_or_else(|| Compress::new(Compression::new(LEVEL), false))
}

fn give_back(mut state: Compress) {
    state.reset();
    let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < IDLE_STATES {
        idle.push(state);
    }
}

/// Writes a gzip member to `W`: the header at once, deflate output as data comes, and the CRC
/// and length trailer on [`finish`](Self::finish). The same writes, flushes and finish give the
/// same bytes as `flate2::write::GzEncoder` built by `GzBuilder::new().mtime(0)` at [`LEVEL`].
pub(crate) struct GzWriter<W: Write> {
    sink: W,
    /// Given back to the pool by `finish`; a writer dropped unfinished (an error) frees it.
    deflate: Compress,
    crc: Crc,
    out: Vec<u8>,
}

impl<W: Write> GzWriter<W> {
    pub(crate) fn new(mut sink: W) -> io::Result<Self> {
        sink.write_all(&HEADER)?;
        Ok(Self { sink, deflate: take_state(), crc: Crc::new(), out: Vec::with_capacity(OUTPUT_BUFFER) })
    }

    /// Hands the compressed output gathered so far to the sink.
    fn dump(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.sink.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// One deflate call into the spare room of the output buffer.
    fn run(&mut self, input: &[u8], flush: FlushCompress) -> io::Result<Status> {
        self.deflate.compress_vec(input, &mut self.out, flush).map_err(io::Error::other)
    }

    /// Ends the deflate stream, writes the trailer and returns the sink.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        loop {
            self.dump()?;
            if self.run(&[], FlushCompress::Finish)? == Status::StreamEnd {
                break;
            }
        }
        self.dump()?;
        let Self { mut sink, deflate, crc, .. } = self;
        give_back(deflate);
        sink.write_all(&crc.sum().to_le_bytes())?;
        sink.write_all(&crc.amount().to_le_bytes())?;
        Ok(sink)
    }
}

impl<W: Write> Write for GzWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        loop {
            self.dump()?;
            let before = self.deflate.total_in();
            self.run(data, FlushCompress::None)?;
            let taken = (self.deflate.total_in() - before) as usize;
            if taken > 0 {
                self.crc.update(&data[..taken]);
                return Ok(taken);
            }
        }
    }

    /// A sync flush, as flate2's writer does it: everything written so far can be decompressed.
    fn flush(&mut self) -> io::Result<()> {
        loop {
            self.dump()?;
            self.run(&[], FlushCompress::Sync)?;
            if self.out.len() < self.out.capacity() {
                break;
            }
        }
        self.dump()?;
        self.sink.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::testing::noise;

    /// What flate2's own encoder writes for the same calls.
    fn reference(chunks: &[&[u8]], flush: bool) -> Vec<u8> {
        let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), Compression::new(LEVEL));
        for chunk in chunks {
            gz.write_all(chunk).unwrap();
        }
        if flush {
            gz.flush().unwrap();
        }
        gz.finish().unwrap()
    }

    fn ours(chunks: &[&[u8]], flush: bool) -> Vec<u8> {
        let mut gz = GzWriter::new(Vec::new()).unwrap();
        for chunk in chunks {
            gz.write_all(chunk).unwrap();
        }
        if flush {
            gz.flush().unwrap();
        }
        gz.finish().unwrap()
    }

    fn json_like(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while out.len() < len {
            out.extend_from_slice(
                format!("{{\"id\":{i},\"name\":\"item-{i}\",\"on\":{}}},", i.is_multiple_of(3)).as_bytes(),
            );
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn writes_the_bytes_flate2_writes_with_pooled_states() {
        let big = json_like(3 << 20);
        let random = noise(7, 300 << 10);
        let small = json_like(16 << 10);
        let cases: Vec<(Vec<&[u8]>, bool)> = vec![
            (vec![], true),
            (vec![b"x"], false),
            (vec![&small], true),
            (vec![&big[..512], &big[512..700_000], &big[700_000..]], true),
            (random.chunks(4096).collect(), true),
            (vec![&random, &small], false),
            (big.chunks(100_000).collect(), true),
        ];
        // Twice over: the second round runs on states the first gave back, reset.
        for round in 0..2 {
            for (i, (chunks, flush)) in cases.iter().enumerate() {
                assert_eq!(ours(chunks, *flush), reference(chunks, *flush), "case {i}, round {round}");
            }
        }
    }

    #[test]
    fn output_decompresses_to_the_input() {
        let data = json_like(200_000);
        let bytes = ours(&[&data], true);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn the_pool_keeps_a_few_states_and_an_abandoned_writer_harms_none() {
        let data = json_like(50_000);
        let before = ours(&[&data], true);
        let mut abandoned = GzWriter::new(Vec::new()).unwrap();
        abandoned.write_all(&noise(3, 10_000)).unwrap();
        drop(abandoned);
        let open: Vec<_> = (0..IDLE_STATES + 2).map(|_| GzWriter::new(Vec::new()).unwrap()).collect();
        for writer in open {
            writer.finish().unwrap();
        }
        assert!(IDLE.lock().unwrap().len() <= IDLE_STATES);
        assert_eq!(ours(&[&data], true), before);
    }
}
