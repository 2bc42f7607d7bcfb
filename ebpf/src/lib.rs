//! Present so cargo sees a library target (aya-build depends on the binary); the programs are
//! in main.rs.
#![no_std]
