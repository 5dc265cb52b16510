//! The composition root of `payments-app`, as a library so that its tests and benchmarks can reach
//! it: [`adapters`] is the one module that knows which adapters exist and turns the command line's
//! specs into them. The binary (`main.rs`) is the command line.

pub mod adapters;
