fn main(){ println!("{}", headstart::smoke()); }
