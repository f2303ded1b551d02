//! The compressions of Nix's binary cache protocol: the `Compression`
//! narinfo field, the NAR file extension that goes with it, and streaming
//! encoders and decoders for each one this server speaks.
use std::{fmt, str::FromStr};

use async_compression::tokio::bufread as codec;
use tokio::io::{AsyncBufRead, AsyncRead};

use crate::CacheError;

/// A compression named in a narinfo, an upload's file name or a
/// `Content-Encoding` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Bzip2,
    Brotli,
    Gzip,
}

impl Compression {
    /// Every compression, for parsing and for error messages.
    pub const ALL: [Compression; 6] = [
        Compression::None,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Brotli,
        Compression::Gzip,
    ];

    /// The narinfo spelling.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Brotli => "br",
            Compression::Gzip => "gzip",
        }
    }

    /// What Nix appends to `.nar` for a NAR compressed this way.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
            Compression::Bzip2 => ".bz2",
            Compression::Brotli => ".br",
            Compression::Gzip => ".gz",
        }
    }

    /// The compression a NAR file name ends with (`….nar.xz` → xz).
    /// `None` when the name does not end in `.nar` plus a known extension.
    pub fn of_nar_file(file: &str) -> Option<(&str, Compression)> {
        Compression::ALL.into_iter().find_map(|c| Some((file.strip_suffix(c.extension())?.strip_suffix(".nar")?, c)))
    }

    /// The `Content-Encoding` token, for encodings HTTP knows.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Xz => Some("xz"),
            Compression::Zstd => Some("zstd"),
            Compression::Bzip2 => Some("bzip2"),
            Compression::Brotli => Some("br"),
            Compression::Gzip => Some("gzip"),
        }
    }

    /// The compression of a `Content-Encoding` header value.
    pub fn from_content_encoding(value: &str) -> Result<Compression, CacheError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(Compression::None),
            "x-gzip" => Ok(Compression::Gzip),
            other => other.parse(),
        }
    }

    /// Decodes `input` (which must be buffered) as it is read.
    pub fn decoder<'a>(self, input: impl AsyncBufRead + Send + Unpin + 'a) -> Box<dyn AsyncRead + Send + Unpin + 'a> {
        match self {
            Compression::None => Box::new(input),
            Compression::Xz => Box::new(multi(codec::XzDecoder::new(input))),
            Compression::Zstd => Box::new(multi(codec::ZstdDecoder::new(input))),
            Compression::Bzip2 => Box::new(multi(codec::BzDecoder::new(input))),
            Compression::Brotli => Box::new(codec::BrotliDecoder::new(input)),
            Compression::Gzip => Box::new(multi(codec::GzipDecoder::new(input))),
        }
    }

    /// Encodes `input` as it is read, at a level chosen for serving on the
    /// fly: fast, since every byte is compressed per request.
    pub fn encoder<'a>(self, input: impl AsyncBufRead + Send + Unpin + 'a) -> Box<dyn AsyncRead + Send + Unpin + 'a> {
        use async_compression::Level;
        match self {
            Compression::None => Box::new(input),
            Compression::Xz => Box::new(codec::XzEncoder::with_quality(input, Level::Precise(1))),
            Compression::Zstd => Box::new(codec::ZstdEncoder::with_quality(input, Level::Precise(3))),
            Compression::Bzip2 => Box::new(codec::BzEncoder::with_quality(input, Level::Fastest)),
            Compression::Brotli => Box::new(codec::BrotliEncoder::with_quality(input, Level::Precise(3))),
            Compression::Gzip => Box::new(codec::GzipEncoder::with_quality(input, Level::Fastest)),
        }
    }
}

/// Concatenated compressed streams decode as one, as `xz -d` does: a NAR
/// compressed in parallel pieces is several streams back to back.
fn multi<D: MultiMember>(mut d: D) -> D {
    d.multiple_members(true);
    d
}

trait MultiMember {
    fn multiple_members(&mut self, yes: bool);
}

macro_rules! multi_member {
    ($($t:ident),*) => {$(
        impl<R: AsyncBufRead> MultiMember for codec::$t<R> {
            fn multiple_members(&mut self, yes: bool) {
                codec::$t::multiple_members(self, yes)
            }
        }
    )*};
}
multi_member!(XzDecoder, ZstdDecoder, BzDecoder, GzipDecoder);

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = CacheError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let known: Vec<_> = Compression::ALL.iter().map(|c| c.name()).collect();
            CacheError::Unsupported(format!(
                "compression {s:?} is not supported; this server speaks {}",
                known.join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, BufReader};

    use super::*;

    #[tokio::test]
    async fn every_compression_round_trips() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for c in Compression::ALL {
            let mut packed = Vec::new();
            c.encoder(&data[..]).read_to_end(&mut packed).await.unwrap();
            if c != Compression::None {
                assert!(packed.len() < data.len() / 4, "{c} compressed {} to {}", data.len(), packed.len());
            }
            let mut back = Vec::new();
            c.decoder(BufReader::new(&packed[..])).read_to_end(&mut back).await.unwrap();
            assert_eq!(back, data, "{c}");
        }
    }

    #[tokio::test]
    async fn concatenated_streams_decode_as_one() {
        let mut packed = Vec::new();
        for part in [&b"first half, "[..], b"second half"] {
            Compression::Xz.encoder(part).read_to_end(&mut packed).await.unwrap();
        }
        let mut back = Vec::new();
        Compression::Xz.decoder(BufReader::new(&packed[..])).read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"first half, second half");
    }

    #[test]
    fn names_and_extensions() {
        assert_eq!(Compression::of_nar_file("abc.nar.xz"), Some(("abc", Compression::Xz)));
        assert_eq!(Compression::of_nar_file("abc.nar.zst"), Some(("abc", Compression::Zstd)));
        assert_eq!(Compression::of_nar_file("abc.nar"), Some(("abc", Compression::None)));
        assert_eq!(Compression::of_nar_file("abc.nar.lz4"), None);
        assert_eq!(Compression::of_nar_file("abc.tar"), None);
        assert_eq!("zstd".parse::<Compression>().unwrap(), Compression::Zstd);
        assert!(matches!("lzip".parse::<Compression>(), Err(CacheError::Unsupported(m)) if m.contains("lzip")));
        assert_eq!(Compression::from_content_encoding("identity").unwrap(), Compression::None);
        assert_eq!(Compression::from_content_encoding("GZIP").unwrap(), Compression::Gzip);
    }
}
