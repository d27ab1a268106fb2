pub fn placeholder() {}

pub mod reader;
