"""gRPC server for the grpc_json_transcoder tests (tests/tests/grpc_json_transcoder.rs).

Usage: transcode_peer.py DIR

Writes bookstore.proto (with google.api.http annotations) and minimal
copies of google/api/{http,annotations}.proto into DIR, runs grpcio-tools'
protoc there (DIR/bookstore.pb: the FileDescriptorSet with its imports, as
Envoy's grpc_json_transcoder takes it; and the Python stubs), then serves
the Bookstore service on 127.0.0.1:0 and prints `PORT <n>`.
"""

import os
import sys
from concurrent import futures

HTTP_PROTO = """
syntax = "proto3";
package google.api;
// The fields of google.api.HttpRule the transcoder reads (same numbers).
message HttpRule {
  string selector = 1;
  oneof pattern {
    string get = 2;
    string put = 3;
    string post = 4;
    string delete = 5;
    string patch = 6;
    CustomHttpPattern custom = 8;
  }
  string body = 7;
  string response_body = 12;
  repeated HttpRule additional_bindings = 11;
}
message CustomHttpPattern {
  string kind = 1;
  string path = 2;
}
"""

ANNOTATIONS_PROTO = """
syntax = "proto3";
package google.api;
import "google/api/http.proto";
import "google/protobuf/descriptor.proto";
extend google.protobuf.MethodOptions {
  HttpRule http = 72295728;
}
"""

BOOKSTORE_PROTO = """
syntax = "proto3";
package bookstore;
import "google/api/annotations.proto";
import "google/protobuf/any.proto";

service Bookstore {
  rpc GetShelf(GetShelfRequest) returns (Shelf) {
    option (google.api.http) = { get: "/v1/shelves/{shelf}" };
  }
  rpc CreateBook(CreateBookRequest) returns (Book) {
    option (google.api.http) = { post: "/v1/shelves/{shelf}/books" body: "book" };
  }
  rpc UpdateShelf(Shelf) returns (Shelf) {
    option (google.api.http) = {
      put: "/v1/shelves/{id}" body: "*"
      additional_bindings { patch: "/v2/shelves/{id}" body: "*" }
    };
  }
  rpc ListBooks(ListBooksRequest) returns (stream Book) {
    option (google.api.http) = { get: "/v1/shelves/{shelf}/books" };
  }
  rpc GetBook(GetBookRequest) returns (Book) {
    option (google.api.http) = { get: "/v1/{name=shelves/*/books/**}" };
  }
  rpc GetBookTitle(GetBookRequest) returns (Book) {
    option (google.api.http) = {
      custom { kind: "HEAD" path: "/v1/titles/{name}" }
      additional_bindings { get: "/v1/titles/{name}" response_body: "title" }
    };
  }
  rpc BulkCreate(stream Book) returns (Shelf) {
    option (google.api.http) = { post: "/v1/books:bulk" body: "*" };
  }
  rpc Echo(Shelf) returns (Shelf);
}

enum Genre {
  GENRE_UNSPECIFIED = 0;
  FICTION = 1;
  HISTORY = 2;
}

message Shelf {
  int64 id = 1;
  string theme = 2;
  Genre genre = 3;
  repeated string tags = 4;
  int32 shelf_size = 5;
}

message GetShelfRequest { int64 shelf = 1; }

message Book {
  int64 id = 1;
  string author = 2;
  string title = 3;
  int32 pages = 4;
  Genre genre = 5;
  bool in_print = 6;
}

message CreateBookRequest {
  int64 shelf = 1;
  Book book = 2;
}

message Filter {
  Genre genre = 1;
  bool in_print = 2;
}

message ListBooksRequest {
  int64 shelf = 1;
  int32 limit = 2;
  string author_filter = 3;
  Filter filter = 4;
  repeated string tags = 5;
}

message GetBookRequest { string name = 1; }

// google.rpc.Status (same numbers), for grpc-status-details-bin.
message RpcStatus {
  int32 code = 1;
  string message = 2;
  repeated google.protobuf.Any details = 3;
}

// A typed error detail.
message ShelfError {
  string reason = 1;
  int64 shelf = 2;
}
"""


def generate(d):
    import grpc_tools
    from grpc_tools import protoc

    os.makedirs(os.path.join(d, "google", "api"), exist_ok=True)
    for name, text in [
        ("google/api/http.proto", HTTP_PROTO),
        ("google/api/annotations.proto", ANNOTATIONS_PROTO),
        ("bookstore.proto", BOOKSTORE_PROTO),
    ]:
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(
        [
            "protoc",
            "-I" + d,
            "-I" + include,
            "--include_imports",
            "--descriptor_set_out=" + os.path.join(d, "bookstore.pb"),
            "--python_out=" + d,
            "--grpc_python_out=" + d,
            os.path.join(d, "bookstore.proto"),
        ]
    )
    if rc != 0:
        sys.exit("protoc failed: %d" % rc)


def main():
    d = sys.argv[1]
    generate(d)
    sys.path.insert(0, d)
    import grpc
    import bookstore_pb2 as pb
    import bookstore_pb2_grpc as pbg
    from google.protobuf import any_pb2

    class Bookstore(pbg.BookstoreServicer):
        def GetShelf(self, req, ctx):
            if req.shelf == 404:
                ctx.abort(grpc.StatusCode.NOT_FOUND, "shelf 404 is not here")
            if req.shelf == 403:
                ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "not your shelf")
            if req.shelf in (409, 410):
                # The head first, the error in the trailers after it (not
                # trailers-only); 409 also with google.rpc.Status details.
                ctx.send_initial_metadata((("x-head", "sent"),))
                if req.shelf == 409:
                    detail = any_pb2.Any()
                    detail.Pack(pb.ShelfError(reason="locked", shelf=req.shelf))
                    st = pb.RpcStatus(code=10, message="shelf is locked", details=[detail])
                    ctx.set_trailing_metadata(
                        (("grpc-status-details-bin", st.SerializeToString()),)
                    )
                    ctx.abort(grpc.StatusCode.ABORTED, "shelf is locked")
                ctx.abort(grpc.StatusCode.NOT_FOUND, "shelf 410 is gone")
            return pb.Shelf(
                id=req.shelf, theme="theme-%d" % req.shelf, genre=pb.HISTORY, tags=["a", "b"]
            )

        def CreateBook(self, req, ctx):
            b = pb.Book()
            b.CopyFrom(req.book)
            b.id = req.shelf * 1000 + 1
            return b

        def UpdateShelf(self, req, ctx):
            return req

        def ListBooks(self, req, ctx):
            if req.limit > 100:
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit too large")
            for i in range(req.limit):
                yield pb.Book(
                    id=req.shelf * 1000 + i,
                    author=req.author_filter,
                    title=",".join(req.tags) or "t%d" % i,
                    genre=req.filter.genre,
                    in_print=req.filter.in_print,
                )

        def GetBook(self, req, ctx):
            return pb.Book(title=req.name, pages=7)

        def GetBookTitle(self, req, ctx):
            return pb.Book(title="title of " + req.name, pages=3)

        def BulkCreate(self, reqs, ctx):
            return pb.Shelf(tags=[b.title for b in reqs])

        def Echo(self, req, ctx):
            return req

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pbg.add_BookstoreServicer_to_server(Bookstore(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("PORT %d" % port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
