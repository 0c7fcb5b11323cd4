"""Constants of the guest ABI, mirrored from native/include/aionub/abi.h
(tests/test_abi.py checks that they agree)."""

from __future__ import annotations

TAG_NONE = 0
TAG_BOOL = 1
TAG_INT = 2
TAG_FLOAT = 3
TAG_STR = 4
TAG_BYTES = 5
TAG_LIST = 6
TAG_DICT = 7
TAG_LAST = TAG_DICT
#: Signatures only: a parameter or return value of any type.
TAG_ANY = 8
#: Tags a signature may use: the scalars (NONE as a return type only) and ANY.
SIGNATURE_TAGS = frozenset((TAG_NONE, TAG_BOOL, TAG_INT, TAG_FLOAT, TAG_STR, TAG_BYTES, TAG_ANY))

#: Lists and dicts nest at most this deep (the outermost container is at depth 1).
MAX_DEPTH = 64
#: The fewest bytes a value and a dict entry take on the wire: counts larger
#: than the rest of the record allows are malformed.
MIN_VALUE_SIZE = 1
MIN_ENTRY_SIZE = 6

STATUS_OK = 0
STATUS_NOT_FOUND = 1
STATUS_BAD_ARGS = 2
STATUS_EXIT = 3

REQ_CALL = 0
REQ_RUN = 1

READY_HAS_MAIN = 1
READY_FLAGS = READY_HAS_MAIN

# System requests (AB_PORT_SYS): request := op:u32, operands;
# reply := result:i64, data (docs/abi.md, "System requests").
SYS_CLOCK = 1
SYS_RANDOM = 2
SYS_SET_FS = 3
SYS_WRITE = 16
SYS_READ = 17
SYS_STAT = 18
SYS_PREAD = 19
SYS_SLEEP = 20
SYS_REPLY_HEADER = 8
#: Ops the C core answers on the vCPU thread; Python sees them only when
#: their length is wrong (a protocol violation).
SYS_FAST_OPS = frozenset((SYS_CLOCK, SYS_RANDOM, SYS_SET_FS))

REPLY_OK = 0
REPLY_ERROR = 1

MAX_PARAMS = 16
MAX_NAME = 255

TYPE_NAMES = {
    TAG_NONE: "None",
    TAG_BOOL: "bool",
    TAG_INT: "int",
    TAG_FLOAT: "float",
    TAG_STR: "str",
    TAG_BYTES: "bytes",
    TAG_LIST: "list",
    TAG_DICT: "dict",
    TAG_ANY: "any",
}
