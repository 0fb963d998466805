//! Everything that talks to the kernel with unsafe code. Each block carries
//! a `// SAFETY:` comment; the rest of the crate denies unsafe.
#![allow(unsafe_code)]

pub mod xsk;
