"""The Open Inference Protocol gRPC messages and service stubs, generated from grpc_predict_v2.proto."""
