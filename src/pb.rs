//! The generated wire types and gRPC stubs (from `proto/`).
#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod cairnpb {
    tonic::include_proto!("cairnpb");
}
