//! The keylink CLI, built the way a third party with their own connector would build it.
fn main() {
    keylink::main()
}
