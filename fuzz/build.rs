include!("../build-support/rpath.rs");

fn main() {
    rpath();
}
