"""S3 and SQS as the engine reads them: objects (HEAD, bounded GET, paged listings with include/exclude globs),
archived storage classes, assumed roles, request settings (requester pays, SSE-C), events from SQS and `.meta.json`
files, the links between metadata files and documents, and a poll's listing state.

May import: records.
"""
