//! Stateful plugins' state, checkpointed with the partition's position.
//!
//! One [`ChainState`] per partition, tenant and stream: the state of each stateful stage
//! of that stream's chain, by plugin reference (the n-th stage naming a plugin matches
//! the n-th such stage of the next chain). Encoding, little endian:
//! `[stages u32]` then per stage `[spec_len u16][spec][format u32][len u32][data]`.

use thiserror::Error;

/// The state of one stateful stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageState {
    /// The pipeline entry's plugin reference (`NAME`, `builtin:NAME`, `file:PATH`).
    pub spec: String,
    pub format: u32,
    pub data: Vec<u8>,
}

/// The state of every stateful stage of one tenant's stream on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub tenant: String,
    pub stream: String,
    /// Empty: the chain has no state (any stored state is removed).
    pub stages: Vec<StageState>,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("corrupt plugin state: {0}")]
pub struct StateDecodeError(&'static str);

pub fn encode(stages: &[StageState]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(stages.len() as u32).to_le_bytes());
    for s in stages {
        out.extend_from_slice(&(s.spec.len() as u16).to_le_bytes());
        out.extend_from_slice(s.spec.as_bytes());
        out.extend_from_slice(&s.format.to_le_bytes());
        out.extend_from_slice(&(s.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&s.data);
    }
    out
}

pub fn decode(mut buf: &[u8]) -> Result<Vec<StageState>, StateDecodeError> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], StateDecodeError> {
        if buf.len() < n {
            return Err(StateDecodeError("truncated"));
        }
        let (head, rest) = buf.split_at(n);
        *buf = rest;
        Ok(head)
    }
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let n = u32_at(take(&mut buf, 4)?);
    let mut out = Vec::new();
    for _ in 0..n {
        let len = u16::from_le_bytes(take(&mut buf, 2)?.try_into().expect("2 bytes"));
        let spec = std::str::from_utf8(take(&mut buf, len as usize)?)
            .map_err(|_| StateDecodeError("plugin reference is not UTF-8"))?
            .to_owned();
        let format = u32_at(take(&mut buf, 4)?);
        let len = u32_at(take(&mut buf, 4)?);
        let data = take(&mut buf, len as usize)?.to_vec();
        out.push(StageState { spec, format, data });
    }
    if !buf.is_empty() {
        return Err(StateDecodeError("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let stages = vec![
            StageState {
                spec: "counter".into(),
                format: 2,
                data: b"{\"count\":4}".to_vec(),
            },
            StageState {
                spec: "builtin:x".into(),
                format: 1,
                data: vec![],
            },
        ];
        let enc = encode(&stages);
        assert_eq!(decode(&enc).unwrap(), stages);
        for n in 0..enc.len() {
            assert!(decode(&enc[..n]).is_err(), "{n}");
        }
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }
}
