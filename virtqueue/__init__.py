"""The wire in Python: generated stubs, codecs, feature bits. The only importer of *_pb2."""
