/* ws.h: RFC 6455 WebSocket frames and handshake values. Pure code like http.c: no libevent, no
 * Lua, no allocation (OpenSSL only for the SHA-1 of Sec-WebSocket-Accept).
 *
 * The frame parser is incremental: it is fed whatever bytes arrived, in pieces of any size, and
 * hands back the payload as it comes, unmasked in place in the caller's buffer, without ever
 * buffering a data payload itself (control payloads, at most 125 bytes, are collected in the
 * parser). Everything RFC 6455 forbids is an error with the close code to send the peer:
 *   1002: RSV bits set (no extension is ever negotiated), a reserved opcode, a control frame that
 *         is fragmented or longer than 125 bytes, a continuation with no message to continue, a
 *         text or binary frame inside a fragmented message, a 64-bit length with the top bit set,
 *         a frame whose mask bit is wrong for its direction (client frames must be masked, server
 *         frames must not be), a close frame with a 1-byte payload or an invalid code;
 *   1007: text that is not UTF-8 (found in the chunk that holds the offending byte, and at the
 *         end of a message cut inside a character), a close reason that is not UTF-8;
 *   1009: a message longer than max_message (found at the header of the frame that would pass
 *         the limit, before any of its payload is read).
 * Errors are sticky: once pgw_ws_parse returned PGW_ERR it does so for every later call.
 */
#ifndef PGW_WS_H
#define PGW_WS_H

#include "pgw.h"

#include <stdint.h>
#include <stddef.h>

enum pgw_ws_opcode {
    PGW_WS_OP_CONT = 0x0,
    PGW_WS_OP_TEXT = 0x1,
    PGW_WS_OP_BINARY = 0x2,
    PGW_WS_OP_CLOSE = 0x8,
    PGW_WS_OP_PING = 0x9,
    PGW_WS_OP_PONG = 0xA,
};

#define PGW_WS_CLOSE_NORMAL 1000
#define PGW_WS_CLOSE_GOING_AWAY 1001
#define PGW_WS_CLOSE_PROTOCOL 1002
#define PGW_WS_CLOSE_NO_STATUS 1005 /* received an empty close payload; never sent */
#define PGW_WS_CLOSE_ABNORMAL 1006  /* the connection dropped without a close; never sent */
#define PGW_WS_CLOSE_INVALID_DATA 1007
#define PGW_WS_CLOSE_POLICY 1008
#define PGW_WS_CLOSE_TOO_BIG 1009
#define PGW_WS_CLOSE_INTERNAL 1011

#define PGW_WS_CONTROL_MAX 125 /* payload bytes of a control frame */
#define PGW_WS_HEADER_MAX 14   /* 2 + 8 (64-bit length) + 4 (mask) */

/* ---- UTF-8, validated incrementally (a character may be split across chunks) ---- */

struct pgw_utf8 {
    uint8_t need;   /* continuation bytes still expected */
    uint8_t lo, hi; /* the range the next continuation byte must be in */
    uint8_t bad;    /* an invalid byte was seen (sticky) */
};

void pgw_utf8_init(struct pgw_utf8 *u);
/* Feeds <p,len>. PGW_OK while everything so far is a valid prefix of UTF-8, PGW_ERR from the
 * first invalid byte on (overlong forms, surrogates, code points past U+10FFFF, stray
 * continuation bytes, 0xC0, 0xC1, 0xF5-0xFF). */
int pgw_utf8_feed(struct pgw_utf8 *u, const uint8_t *p, size_t len);
/* Whether what was fed ends on a character boundary (and nothing was invalid). */
int pgw_utf8_complete(const struct pgw_utf8 *u);

/* ---- Frames ---- */

struct pgw_ws_parser {
    /* settings, from pgw_ws_parser_init */
    unsigned from_client : 1; /* frames must be masked (they come from a client) */
    uint64_t max_message;     /* payload bytes of one data message (0: no limit) */
    /* the frame in progress */
    unsigned in_payload : 1;  /* the header was read; frame_left payload bytes follow */
    uint8_t hdr[PGW_WS_HEADER_MAX];
    unsigned hdr_have;
    unsigned opcode, fin, masked;
    uint8_t mask[4];
    unsigned mask_off;        /* position in the mask of the next payload byte */
    uint64_t frame_left;
    /* a control frame's payload, collected until complete */
    uint8_t ctl[PGW_WS_CONTROL_MAX];
    unsigned ctl_len;
    /* the data message in progress */
    unsigned msg_opcode;      /* 0: none; TEXT or BINARY */
    uint64_t msg_len;         /* payload bytes so far, the current frame's included */
    unsigned msg_started : 1; /* a chunk of it was handed out (the next one is not "first") */
    struct pgw_utf8 utf8;
    /* the error, once one happened */
    int close_code;           /* 0, or 1002 / 1007 / 1009 */
    const char *err;          /* static string for the log */
};

/* One piece handed out by pgw_ws_parse. */
struct pgw_ws_chunk {
    unsigned opcode;     /* TEXT or BINARY for data (the message's opcode, also for the bytes of
                            continuation frames); CLOSE, PING or PONG for a complete control frame */
    uint8_t *data;       /* the unmasked payload bytes: in the caller's buffer for data, in the
                            parser (p->ctl) for control frames; valid until the next call */
    size_t len;          /* may be 0 (an empty frame) */
    unsigned first : 1;  /* data: the first bytes of a message */
    unsigned fin : 1;    /* data: the last bytes of a message; control frames: always 1 */
    unsigned frame_end : 1; /* the last bytes of a frame */
    /* close frames only */
    int close_code;      /* PGW_WS_CLOSE_NO_STATUS when the payload is empty */
    const uint8_t *reason;
    size_t reason_len;
};

/* <from_client>: 1 for frames a client sends (masked), 0 for a server's (unmasked).
 * <max_message>: the limit of a data message's payload (0: none). */
void pgw_ws_parser_init(struct pgw_ws_parser *p, int from_client, uint64_t max_message);

/* Consumes bytes of <buf,len> until one chunk is ready; the payload is unmasked in place in <buf>.
 * Returns:
 *   PGW_OK    *chunk is filled, *used bytes of <buf> were consumed (the chunk's data lies inside
 *             them); call again with the rest;
 *   PGW_AGAIN all <len> bytes were consumed (*used == len) and more are needed;
 *   PGW_ERR   a violation: p->close_code and p->err say which; *used is unspecified.
 * Each frame gives at least one chunk (an empty frame gives one of length 0); a data frame whose
 * payload arrives in pieces gives one chunk per call that had payload bytes. */
int pgw_ws_parse(struct pgw_ws_parser *p, uint8_t *buf, size_t len, size_t *used,
                 struct pgw_ws_chunk *chunk);

/* Writes a frame header into <out> and returns its length (2 to 14). <mask>: the 4-byte masking
 * key (frames towards a server), or NULL (towards a client). The payload is masked separately. */
size_t pgw_ws_frame_header(uint8_t out[PGW_WS_HEADER_MAX], unsigned opcode, int fin, uint64_t len,
                           const uint8_t *mask);

/* XORs <p,len> with <mask>, starting at key position <off> (0-3); returns the position after. */
unsigned pgw_ws_mask(uint8_t *p, size_t len, const uint8_t mask[4], unsigned off);
/* The same, writing the result to <dst> (not overlapping <src>): copy and mask in one pass. */
unsigned pgw_ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t mask[4],
                          unsigned off);

/* Whether <code> may appear in a close frame: 1000-1003, 1007-1014, 3000-4999. */
int pgw_ws_close_code_valid(int code);

/* Builds a close payload: <code> in network order, then <reason> cut to fit 123 bytes at a
 * character boundary (when it is UTF-8). Returns its length (2 to 125). */
size_t pgw_ws_close_payload(uint8_t out[PGW_WS_CONTROL_MAX], int code, const char *reason,
                            size_t reason_len);

/* ---- Handshake values ---- */

/* Whether <v,len> is a Sec-WebSocket-Key: 16 bytes in base64 (24 characters, the last two "="). */
int pgw_ws_key_valid(const char *v, size_t len);

/* Sec-WebSocket-Accept for <key>: base64(SHA-1(key + the RFC 6455 GUID)): 28 characters and a
 * NUL in <out>. */
void pgw_ws_accept(const char *key, size_t key_len, char out[29]);

/* Whether the comma-separated list <list,len> (optional whitespace around items, empty items
 * allowed) holds <tok,tok_len>, compared case-insensitively when <icase> is set. */
int pgw_ws_list_has(const char *list, size_t len, const char *tok, size_t tok_len, int icase);

#endif
