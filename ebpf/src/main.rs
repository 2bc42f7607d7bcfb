//! loupe's kernel programs.
//!
//! Syscall tracepoints on the socket paths of the target processes: accept/connect open a tracked
//! socket, read/write and friends copy the first bytes they move into the `EVENTS` ring buffer,
//! close (and close_range) forgets the socket, an exec sets
//! its sockets aside for userspace to check, and a fork of a target makes its child a target too;
//! while loupe watches for names or executables, the exec of any other process is matched by
//! name or reported (`watch`). Every program
//! looks its key up in a map that only holds target processes before doing anything else, so an
//! untargeted process pays one hash lookup per syscall and nothing more. libpq uprobes, attached
//! per target process, report each query call and the result it got back. A perf_event program,
//! opened only on threads running something slow, samples their stacks.
#![no_std]
#![no_main]

mod config;
mod conn;
mod cpu;
mod data;
mod emit;
mod fork;
mod golang;
mod libpq;
mod maps;
mod tls;
mod watch;

use aya_ebpf::{
    macros::{perf_event, tracepoint, uprobe, uretprobe},
    programs::{PerfEventContext, ProbeContext, RetProbeContext, TracePointContext},
};

/// Runs a `try_` body and turns its result into the tracepoint's return value. Errors are already
/// counted where they happen; a tracepoint's return value is ignored by the kernel.
fn finish(result: Result<(), i64>) -> u32 {
    match result {
        Ok(()) | Err(_) => 0,
    }
}

#[tracepoint]
pub fn enter_read_buf(ctx: TracePointContext) -> u32 {
    finish(data::try_enter_buf(&ctx, loupe_common::Direction::Ingress))
}

#[tracepoint]
pub fn enter_write_buf(ctx: TracePointContext) -> u32 {
    finish(data::try_enter_buf(&ctx, loupe_common::Direction::Egress))
}

#[tracepoint]
pub fn enter_read_iov(ctx: TracePointContext) -> u32 {
    finish(data::try_enter_iov(&ctx, loupe_common::Direction::Ingress))
}

#[tracepoint]
pub fn enter_write_iov(ctx: TracePointContext) -> u32 {
    finish(data::try_enter_iov(&ctx, loupe_common::Direction::Egress))
}

#[tracepoint]
pub fn enter_read_msg(ctx: TracePointContext) -> u32 {
    finish(data::try_enter_msg(&ctx, loupe_common::Direction::Ingress))
}

#[tracepoint]
pub fn enter_write_msg(ctx: TracePointContext) -> u32 {
    finish(data::try_enter_msg(&ctx, loupe_common::Direction::Egress))
}

#[tracepoint]
pub fn enter_sendfile(ctx: TracePointContext) -> u32 {
    finish(data::try_enter_sendfile(&ctx))
}

#[tracepoint]
pub fn exit_data(ctx: TracePointContext) -> u32 {
    finish(data::try_exit_data(&ctx))
}

#[tracepoint]
pub fn enter_accept(ctx: TracePointContext) -> u32 {
    finish(conn::try_enter_accept(&ctx))
}

#[tracepoint]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    finish(conn::try_exit_accept(&ctx))
}

#[tracepoint]
pub fn enter_connect(ctx: TracePointContext) -> u32 {
    finish(conn::try_enter_connect(&ctx))
}

#[tracepoint]
pub fn exit_connect(ctx: TracePointContext) -> u32 {
    finish(conn::try_exit_connect(&ctx))
}

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    finish(conn::try_enter_close(&ctx))
}

#[tracepoint]
pub fn enter_close_range(ctx: TracePointContext) -> u32 {
    finish(conn::try_enter_close_range(&ctx))
}

#[tracepoint]
pub fn exit_close_range(ctx: TracePointContext) -> u32 {
    finish(conn::try_exit_close_range(&ctx))
}

#[tracepoint]
pub fn enter_dup(ctx: TracePointContext) -> u32 {
    finish(conn::try_enter_dup(&ctx))
}

#[tracepoint]
pub fn enter_dup2(ctx: TracePointContext) -> u32 {
    finish(conn::try_enter_dup2(&ctx))
}

#[tracepoint]
pub fn enter_fcntl(ctx: TracePointContext) -> u32 {
    finish(conn::try_enter_fcntl(&ctx))
}

#[tracepoint]
pub fn exit_dup(ctx: TracePointContext) -> u32 {
    finish(conn::try_exit_dup(&ctx))
}

#[tracepoint]
pub fn sock_state(ctx: TracePointContext) -> u32 {
    finish(conn::try_sock_state(&ctx))
}

#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    finish(fork::try_process_fork(&ctx))
}

#[tracepoint]
pub fn process_exec(ctx: TracePointContext) -> u32 {
    finish(conn::try_process_exec(&ctx))
}

#[uprobe]
pub fn libpq_enter(ctx: ProbeContext) -> u32 {
    finish(libpq::try_enter(&ctx))
}

#[uretprobe]
pub fn libpq_return(ctx: RetProbeContext) -> u32 {
    finish(libpq::try_return(&ctx))
}

#[uprobe]
pub fn tls_enter(ctx: ProbeContext) -> u32 {
    finish(tls::try_enter(&ctx))
}

#[uretprobe]
pub fn tls_return(ctx: RetProbeContext) -> u32 {
    finish(tls::try_return(&ctx))
}

#[uprobe]
pub fn go_enter(ctx: ProbeContext) -> u32 {
    finish(golang::try_enter(&ctx))
}

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    finish(cpu::try_sample(&ctx))
}

#[perf_event]
pub fn cpu_sample_always(ctx: PerfEventContext) -> u32 {
    finish(cpu::try_sample_always(&ctx))
}

#[tracepoint]
pub fn off_cpu(ctx: TracePointContext) -> u32 {
    finish(cpu::try_switch(&ctx))
}

#[tracepoint]
pub fn off_cpu_return(ctx: TracePointContext) -> u32 {
    finish(cpu::try_return(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A panic path the compiler could not remove stays in the object as an endless loop, which
    // the verifier rejects at load: a mistake shows up as a load error, never as undefined
    // behaviour in a program that passed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
