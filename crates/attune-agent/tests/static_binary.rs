//! Checks that the distributed agent binary is fully static: an ELF file without a PT_INTERP
//! program header (no dynamic loader), so it runs in images without glibc or without any libc.
//!
//! The binaries are `agent-dist/attune-agent-x86_64` (or the file named by `ATTUNE_AGENT_BINARY`)
//! and `agent-dist/attune-agent-aarch64` (`scripts/build-agent.sh --arch aarch64`). When one is
//! absent its check is skipped, unless `ATTUNE_REQUIRE_AGENT_BINARY=1` (x86_64, CI sets it) or
//! `ATTUNE_REQUIRE_AGENT_BINARY_AARCH64=1` turns absence into a failure.

use std::path::PathBuf;

const PT_INTERP: u32 = 3;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// What the program headers of an ELF file say about linking.
#[derive(Debug, PartialEq, Eq)]
struct ElfSummary {
    machine: u16,
    has_interpreter: bool,
}

fn read_u16(bytes: &[u8], offset: usize, little_endian: bool) -> Result<u16, String> {
    let raw: [u8; 2] = bytes
        .get(offset..offset + 2)
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(|| format!("elf file too short for a u16 at {offset}"))?;
    Ok(if little_endian {
        u16::from_le_bytes(raw)
    } else {
        u16::from_be_bytes(raw)
    })
}

fn read_u32(bytes: &[u8], offset: usize, little_endian: bool) -> Result<u32, String> {
    let raw: [u8; 4] = bytes
        .get(offset..offset + 4)
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(|| format!("elf file too short for a u32 at {offset}"))?;
    Ok(if little_endian {
        u32::from_le_bytes(raw)
    } else {
        u32::from_be_bytes(raw)
    })
}

fn read_u64(bytes: &[u8], offset: usize, little_endian: bool) -> Result<u64, String> {
    let raw: [u8; 8] = bytes
        .get(offset..offset + 8)
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(|| format!("elf file too short for a u64 at {offset}"))?;
    Ok(if little_endian {
        u64::from_le_bytes(raw)
    } else {
        u64::from_be_bytes(raw)
    })
}

/// Reads the ELF header and program header table (32- or 64-bit, either byte order).
fn summarize_elf(bytes: &[u8]) -> Result<ElfSummary, String> {
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an elf file (bad magic)".to_string());
    }
    let is_64_bit = match bytes.get(4) {
        Some(1) => false,
        Some(2) => true,
        other => return Err(format!("unknown elf class {other:?}")),
    };
    let little_endian = match bytes.get(5) {
        Some(1) => true,
        Some(2) => false,
        other => return Err(format!("unknown elf byte order {other:?}")),
    };
    let machine = read_u16(bytes, 0x12, little_endian)?;
    let (program_header_offset, entry_size, entry_count) = if is_64_bit {
        (
            read_u64(bytes, 0x20, little_endian)?,
            read_u16(bytes, 0x36, little_endian)?,
            read_u16(bytes, 0x38, little_endian)?,
        )
    } else {
        (
            u64::from(read_u32(bytes, 0x1c, little_endian)?),
            read_u16(bytes, 0x2a, little_endian)?,
            read_u16(bytes, 0x2c, little_endian)?,
        )
    };
    let program_header_offset = usize::try_from(program_header_offset)
        .map_err(|_| "program header offset too large".to_string())?;
    let mut has_interpreter = false;
    for index in 0..usize::from(entry_count) {
        let entry_offset = program_header_offset + index * usize::from(entry_size);
        if read_u32(bytes, entry_offset, little_endian)? == PT_INTERP {
            has_interpreter = true;
        }
    }
    Ok(ElfSummary {
        machine,
        has_interpreter,
    })
}

/// A minimal little-endian ELF64 header with the given program header types.
fn synthetic_elf64(program_header_types: &[u32]) -> Vec<u8> {
    let mut bytes = vec![0_u8; 64];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[4] = 2;
    bytes[5] = 1;
    bytes[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
    bytes[0x20..0x28].copy_from_slice(&64_u64.to_le_bytes());
    bytes[0x36..0x38].copy_from_slice(&56_u16.to_le_bytes());
    bytes[0x38..0x3a].copy_from_slice(&(program_header_types.len() as u16).to_le_bytes());
    for program_header_type in program_header_types {
        let mut entry = vec![0_u8; 56];
        entry[..4].copy_from_slice(&program_header_type.to_le_bytes());
        bytes.extend(entry);
    }
    bytes
}

#[test]
fn the_elf_reader_finds_pt_interp() {
    let with_interpreter = summarize_elf(&synthetic_elf64(&[6, PT_INTERP, 1])).unwrap();
    assert!(with_interpreter.has_interpreter);
    assert_eq!(with_interpreter.machine, EM_X86_64);
    assert!(
        !summarize_elf(&synthetic_elf64(&[1, 1, 4]))
            .unwrap()
            .has_interpreter
    );
    assert!(summarize_elf(b"#!/bin/sh\n").is_err());
    assert!(
        summarize_elf(&synthetic_elf64(&[1])[..66]).is_err(),
        "truncated table"
    );
    // This test executable is a normal, dynamically linked host binary.
    let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let own_summary = summarize_elf(&own).unwrap();
    let host_is_static = cfg!(target_env = "musl") || cfg!(target_feature = "crt-static");
    assert_eq!(own_summary.has_interpreter, !host_is_static);
}

/// Checks the file at `path` is a static ELF binary for `machine`; a missing file is skipped
/// unless the environment variable `required_variable` is `1`.
fn check_distributed_binary(path: PathBuf, machine: u16, required_variable: &str) {
    let required = std::env::var(required_variable).is_ok_and(|value| value == "1");
    if !path.exists() {
        assert!(
            !required,
            "agent binary {} is missing and {required_variable}=1: run scripts/build-agent.sh",
            path.display()
        );
        eprintln!(
            "skipping: agent binary {} not built (run scripts/build-agent.sh)",
            path.display()
        );
        return;
    }
    let bytes =
        std::fs::read(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    let summary =
        summarize_elf(&bytes).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert!(
        !summary.has_interpreter,
        "{} has a PT_INTERP program header: it is dynamically linked",
        path.display()
    );
    assert_eq!(
        summary.machine,
        machine,
        "{} is not a binary for ELF machine {machine}",
        path.display()
    );
}

fn agent_dist(file_name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../agent-dist")
        .join(file_name)
}

#[test]
fn distributed_agent_binary_is_static() {
    let path = match std::env::var_os("ATTUNE_AGENT_BINARY") {
        Some(path) => PathBuf::from(path),
        None => agent_dist("attune-agent-x86_64"),
    };
    // A binary named by ATTUNE_AGENT_BINARY may be for another machine; the name tells.
    let machine = if path
        .file_name()
        .is_some_and(|name| name.to_string_lossy().contains("aarch64"))
    {
        EM_AARCH64
    } else {
        EM_X86_64
    };
    check_distributed_binary(path, machine, "ATTUNE_REQUIRE_AGENT_BINARY");
}

#[test]
fn distributed_aarch64_agent_binary_is_static() {
    check_distributed_binary(
        agent_dist("attune-agent-aarch64"),
        EM_AARCH64,
        "ATTUNE_REQUIRE_AGENT_BINARY_AARCH64",
    );
}
