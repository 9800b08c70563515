//! Walking protobuf messages in place: the fields of one message as slices of the
//! request, every length checked against the bytes left, unknown fields skipped with
//! prost (groups nest at most prost's recursion limit deep). Shared by the 1.0
//! ([`super::proto`]) and 2.0 ([`super::proto_v2`]) decoders.

use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};

/// Why a body is not the message it claims to be.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("invalid protobuf in {0}: {1}")]
    Proto(&'static str, prost::DecodeError),
    #[error("invalid protobuf in {0}: a length runs past the end of the message")]
    Truncated(&'static str),
    #[error("invalid protobuf in {0}: field {1} has the wrong wire type")]
    WireType(&'static str, u32),
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, String),
    /// Over a count limit (413).
    #[error("{0}")]
    TooMany(String),
}

/// A field's value as found on the wire.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    /// A length-delimited payload.
    Bytes(&'a [u8]),
    Varint(u64),
    /// Fixed-width or group (skipped).
    Other,
}

impl<'a> Field<'a> {
    /// The payload of a length-delimited field, or the error for another wire type.
    pub fn bytes(self, what: &'static str, tag: u32) -> Result<&'a [u8], WireError> {
        match self {
            Field::Bytes(b) => Ok(b),
            _ => Err(WireError::WireType(what, tag)),
        }
    }
}

/// The fields of one message in wire order; after an error, nothing more.
pub struct Fields<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Fields { buf, what }
    }

    fn field(&mut self) -> Result<(u32, Field<'a>), WireError> {
        let what = self.what;
        let proto = |e| WireError::Proto(what, e);
        let (tag, wire) = decode_key(&mut self.buf).map_err(proto)?;
        match wire {
            WireType::LengthDelimited => {
                let len = decode_varint(&mut self.buf).map_err(proto)?;
                if len > self.buf.len() as u64 {
                    return Err(WireError::Truncated(what));
                }
                let (payload, rest) = self.buf.split_at(len as usize);
                self.buf = rest;
                Ok((tag, Field::Bytes(payload)))
            }
            WireType::Varint => Ok((
                tag,
                Field::Varint(decode_varint(&mut self.buf).map_err(proto)?),
            )),
            _ => {
                skip_field(wire, tag, &mut self.buf, DecodeContext::default()).map_err(proto)?;
                Ok((tag, Field::Other))
            }
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Field<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let res = self.field();
        if res.is_err() {
            self.buf = &[];
        }
        Some(res)
    }
}

/// The varints of a packed repeated field.
pub fn packed<'a>(
    what: &'static str,
    mut buf: &'a [u8],
) -> impl Iterator<Item = Result<u64, WireError>> + 'a {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let r = decode_varint(&mut buf).map_err(|e| WireError::Proto(what, e));
        if r.is_err() {
            buf = &[];
        }
        Some(r)
    })
}
