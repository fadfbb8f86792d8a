/* ws.c: RFC 6455 frames and handshake values (ws.h).
 *
 * The frame parser is a small state machine over struct pgw_ws_parser: it collects a header
 * (2 to 14 bytes) in p->hdr, checking each field as soon as its last byte is in (the first byte,
 * the second, the extended length), so a violation is reported by the call that fed the byte
 * that decided it, before any payload is read; then it hands out the payload where it lies in the
 * caller's buffer, unmasked in place. Only control payloads (at most 125 bytes, needed whole to
 * be checked) are copied, into p->ctl. Text is validated by the incremental UTF-8 checker below
 * as it passes, so bad text fails before the rest of it arrives (close reasons, whole, at the
 * end of their frame). Masking and the ASCII run of the UTF-8 checker go 8 bytes at a time.
 */
#include "ws.h"

#include <openssl/evp.h>

#define HIGHS 0x8080808080808080ull

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof(x)); /* an unaligned load on every target we build for */
    return x;
}

/* ---- UTF-8 ---- */

void pgw_utf8_init(struct pgw_utf8 *u) { memset(u, 0, sizeof(*u)); }

/* A byte where a character starts: sets how many continuation bytes follow and the range of the
 * first one, which is what excludes overlong forms (E0, F0), surrogates (ED) and code points past
 * U+10FFFF (F4) (Unicode table 3-7). */
static int utf8_lead(struct pgw_utf8 *u, uint8_t c)
{
    u->lo = 0x80, u->hi = 0xBF;
    if (c < 0xC2) /* a stray continuation byte, or C0/C1 (overlong 2-byte forms) */
        return PGW_ERR;
    if (c < 0xE0) {
        u->need = 1;
    } else if (c < 0xF0) {
        u->need = 2;
        if (c == 0xE0)
            u->lo = 0xA0;
        else if (c == 0xED)
            u->hi = 0x9F;
    } else if (c < 0xF5) {
        u->need = 3;
        if (c == 0xF0)
            u->lo = 0x90;
        else if (c == 0xF4)
            u->hi = 0x8F;
    } else {
        return PGW_ERR;
    }
    return PGW_OK;
}

/* Skips ASCII from <p,len> 8 bytes at a time; returns how many bytes were skipped (a multiple of
 * 8: the byte loop looks at the rest). */
static size_t skip_ascii(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i + 32 <= len && ((load64(p + i) | load64(p + i + 8) | load64(p + i + 16) |
                              load64(p + i + 24)) & HIGHS) == 0)
        i += 32;
    while (i + 8 <= len && (load64(p + i) & HIGHS) == 0)
        i += 8;
    return i;
}

int pgw_utf8_feed(struct pgw_utf8 *u, const uint8_t *p, size_t len)
{
    if (u->bad)
        return PGW_ERR;
    for (size_t i = 0; i < len;) {
        if (u->need == 0) {
            i += skip_ascii(p + i, len - i);
            if (i == len)
                break;
            uint8_t c = p[i++];
            if (c >= 0x80 && utf8_lead(u, c) != PGW_OK)
                goto bad;
            continue;
        }
        uint8_t c = p[i++];
        if (c < u->lo || c > u->hi)
            goto bad;
        u->need--;
        u->lo = 0x80, u->hi = 0xBF; /* only the first continuation byte has a narrower range */
    }
    return PGW_OK;
bad:
    u->bad = 1;
    return PGW_ERR;
}

int pgw_utf8_complete(const struct pgw_utf8 *u) { return !u->bad && u->need == 0; }

/* ---- Masking ---- */

/* XORs <src,len> with <mask> from key position <off> into <dst>, which may be <src> itself. */
static unsigned mask_into(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t mask[4],
                          unsigned off)
{
    size_t i = 0;
    off &= 3;
    if (len >= 8) {
        /* The key rotated to start at <off>, twice: byte order does not matter, the word is built
         * and applied through memory. Each step is a multiple of 8 bytes, so the rotation stays
         * right. */
        uint8_t k[8];
        for (unsigned j = 0; j < 8; j++)
            k[j] = mask[(off + j) & 3];
        uint64_t key = load64(k);
        for (; i + 32 <= len; i += 32) {
            uint64_t x[4] = {load64(src + i) ^ key, load64(src + i + 8) ^ key,
                             load64(src + i + 16) ^ key, load64(src + i + 24) ^ key};
            memcpy(dst + i, x, sizeof(x));
        }
        for (; i + 8 <= len; i += 8) {
            uint64_t x = load64(src + i) ^ key;
            memcpy(dst + i, &x, sizeof(x));
        }
    }
    for (; i < len; i++)
        dst[i] = src[i] ^ mask[(off + i) & 3];
    return (unsigned)((off + len) & 3);
}

unsigned pgw_ws_mask(uint8_t *p, size_t len, const uint8_t mask[4], unsigned off)
{
    return mask_into(p, p, len, mask, off);
}

unsigned pgw_ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t mask[4],
                          unsigned off)
{
    return mask_into(dst, src, len, mask, off);
}

/* ---- Frame parser: header ---- */

static int fail(struct pgw_ws_parser *p, int code, const char *why)
{
    p->close_code = code;
    p->err = why;
    return PGW_ERR;
}

static int is_control(unsigned opcode) { return opcode >= 0x8; }

/* Extended length bytes announced by the second header byte. */
static unsigned ext_len(uint8_t b1)
{
    b1 &= 0x7F;
    return b1 == 126 ? 2 : b1 == 127 ? 8 : 0;
}

void pgw_ws_parser_init(struct pgw_ws_parser *p, int from_client, uint64_t max_message)
{
    memset(p, 0, sizeof(*p));
    p->from_client = from_client != 0;
    p->max_message = max_message;
}

/* FIN, RSV and the opcode, checked against the message in progress. */
static int check_byte0(struct pgw_ws_parser *p)
{
    uint8_t b = p->hdr[0];
    p->fin = b >> 7;
    p->opcode = b & 0x0F;
    if (b & 0x70) /* no extension is ever negotiated */
        return fail(p, PGW_WS_CLOSE_PROTOCOL, "RSV bits set");
    if (is_control(p->opcode)) {
        if (p->opcode > PGW_WS_OP_PONG)
            return fail(p, PGW_WS_CLOSE_PROTOCOL, "reserved opcode");
        if (!p->fin)
            return fail(p, PGW_WS_CLOSE_PROTOCOL, "fragmented control frame");
        return PGW_OK;
    }
    if (p->opcode > PGW_WS_OP_BINARY)
        return fail(p, PGW_WS_CLOSE_PROTOCOL, "reserved opcode");
    if (p->opcode == PGW_WS_OP_CONT && p->msg_opcode == 0)
        return fail(p, PGW_WS_CLOSE_PROTOCOL, "continuation with no message");
    if (p->opcode != PGW_WS_OP_CONT && p->msg_opcode != 0)
        return fail(p, PGW_WS_CLOSE_PROTOCOL, "new message inside a fragmented one");
    return PGW_OK;
}

/* The mask bit, which must say where the frame comes from. */
static int check_byte1(struct pgw_ws_parser *p)
{
    p->masked = p->hdr[1] >> 7;
    if (p->masked != p->from_client)
        return fail(p, PGW_WS_CLOSE_PROTOCOL,
                    p->from_client ? "unmasked client frame" : "masked server frame");
    return PGW_OK;
}

/* The payload length, once all its bytes are in. Non-minimal encodings are accepted: the limits
 * apply to the value. */
static int check_length(struct pgw_ws_parser *p)
{
    uint64_t n = p->hdr[1] & 0x7F;
    unsigned ext = ext_len(p->hdr[1]);
    if (ext > 0) {
        n = 0;
        for (unsigned i = 0; i < ext; i++)
            n = n << 8 | p->hdr[2 + i];
    }
    if (n >> 63)
        return fail(p, PGW_WS_CLOSE_PROTOCOL, "64-bit length with the top bit set");
    if (is_control(p->opcode)) {
        if (n > PGW_WS_CONTROL_MAX)
            return fail(p, PGW_WS_CLOSE_PROTOCOL, "control frame longer than 125 bytes");
        if (p->opcode == PGW_WS_OP_CLOSE && n == 1)
            return fail(p, PGW_WS_CLOSE_PROTOCOL, "close frame with a 1-byte payload");
    } else {
        /* msg_len never passed the limit, so the subtraction cannot wrap */
        uint64_t before = p->opcode == PGW_WS_OP_CONT ? p->msg_len : 0;
        if (p->max_message != 0 && n > p->max_message - before)
            return fail(p, PGW_WS_CLOSE_TOO_BIG, "message too big");
    }
    p->frame_left = n;
    return PGW_OK;
}

/* The header is complete: the payload comes next. */
static void start_frame(struct pgw_ws_parser *p)
{
    if (p->masked)
        memcpy(p->mask, p->hdr + p->hdr_have - 4, 4);
    p->mask_off = 0;
    p->hdr_have = 0;
    p->in_payload = 1;
    if (is_control(p->opcode)) {
        p->ctl_len = 0;
    } else if (p->opcode == PGW_WS_OP_CONT) {
        p->msg_len += p->frame_left;
    } else {
        p->msg_opcode = p->opcode;
        p->msg_len = p->frame_left;
        p->msg_started = 0;
        pgw_utf8_init(&p->utf8);
    }
}

/* How many header bytes to have before the next check: the first byte, the second, the end of
 * the extended length, the end of the masking key. */
static unsigned next_boundary(const struct pgw_ws_parser *p)
{
    if (p->hdr_have < 2)
        return p->hdr_have + 1;
    unsigned ext = 2 + ext_len(p->hdr[1]);
    if (p->hdr_have < ext)
        return ext;
    return ext + (p->hdr[1] & 0x80 ? 4 : 0);
}

/* Runs the checks due now that hdr_have reached a boundary (several may coincide). */
static int header_reached(struct pgw_ws_parser *p)
{
    unsigned have = p->hdr_have;
    if (have == 1)
        return check_byte0(p);
    unsigned ext = 2 + ext_len(p->hdr[1]);
    if (have == 2 && check_byte1(p) != PGW_OK)
        return PGW_ERR;
    if (have == ext && check_length(p) != PGW_OK)
        return PGW_ERR;
    if (have == ext + (p->masked ? 4 : 0))
        start_frame(p);
    return PGW_OK;
}

/* Collects header bytes from buf[*i..len); PGW_OK once the header is complete and checked. */
static int read_header(struct pgw_ws_parser *p, const uint8_t *buf, size_t len, size_t *i)
{
    while (!p->in_payload) {
        unsigned need = next_boundary(p);
        size_t n = PGW_MIN((size_t)(need - p->hdr_have), len - *i);
        if (n > 0)
            memcpy(p->hdr + p->hdr_have, buf + *i, n);
        p->hdr_have += (unsigned)n;
        *i += n;
        if (p->hdr_have < need)
            return PGW_AGAIN;
        if (header_reached(p) != PGW_OK)
            return PGW_ERR;
    }
    return PGW_OK;
}

/* ---- Frame parser: payload ---- */

/* The payload bytes of the current frame in buf[*i..len), unmasked in place: their count. */
static size_t take_payload(struct pgw_ws_parser *p, uint8_t *buf, size_t len, size_t *i)
{
    size_t n = (size_t)PGW_MIN(p->frame_left, (uint64_t)(len - *i));
    if (n > 0 && p->masked)
        p->mask_off = pgw_ws_mask(buf + *i, n, p->mask, p->mask_off);
    p->frame_left -= n;
    *i += n;
    return n;
}

/* Data: hands out what arrived of the payload, checking text as it passes. */
static int read_data(struct pgw_ws_parser *p, uint8_t *buf, size_t len, size_t *i,
                     struct pgw_ws_chunk *chunk)
{
    if (p->frame_left > 0 && *i == len)
        return PGW_AGAIN; /* the header took the whole buffer: no payload byte to hand out */
    uint8_t *data = buf + *i;
    size_t n = take_payload(p, buf, len, i);
    int is_text = p->msg_opcode == PGW_WS_OP_TEXT;
    if (is_text && pgw_utf8_feed(&p->utf8, data, n) != PGW_OK)
        return fail(p, PGW_WS_CLOSE_INVALID_DATA, "invalid UTF-8 in a text message");
    memset(chunk, 0, sizeof(*chunk));
    chunk->opcode = p->msg_opcode;
    chunk->data = data;
    chunk->len = n;
    chunk->first = !p->msg_started;
    chunk->frame_end = p->frame_left == 0;
    chunk->fin = chunk->frame_end && p->fin;
    p->msg_started = 1;
    if (chunk->frame_end)
        p->in_payload = 0;
    if (chunk->fin) {
        if (is_text && !pgw_utf8_complete(&p->utf8))
            return fail(p, PGW_WS_CLOSE_INVALID_DATA, "text message ends inside a character");
        p->msg_opcode = 0;
    }
    return PGW_OK;
}

/* A close payload: a valid code, then a UTF-8 reason; empty means "no status". */
static int check_close(struct pgw_ws_parser *p, struct pgw_ws_chunk *chunk)
{
    if (p->ctl_len == 0) { /* the header refused a 1-byte payload */
        chunk->close_code = PGW_WS_CLOSE_NO_STATUS;
        return PGW_OK;
    }
    chunk->close_code = p->ctl[0] << 8 | p->ctl[1];
    if (!pgw_ws_close_code_valid(chunk->close_code))
        return fail(p, PGW_WS_CLOSE_PROTOCOL, "invalid close code");
    struct pgw_utf8 u;
    pgw_utf8_init(&u);
    chunk->reason = p->ctl + 2;
    chunk->reason_len = p->ctl_len - 2;
    if (pgw_utf8_feed(&u, chunk->reason, chunk->reason_len) != PGW_OK || !pgw_utf8_complete(&u))
        return fail(p, PGW_WS_CLOSE_INVALID_DATA, "close reason is not UTF-8");
    return PGW_OK;
}

/* Control: collects the payload in p->ctl (unmasked in <buf> first, as data is), hands it out
 * whole. */
static int read_control(struct pgw_ws_parser *p, uint8_t *buf, size_t len, size_t *i,
                        struct pgw_ws_chunk *chunk)
{
    size_t at = *i;
    size_t n = take_payload(p, buf, len, i);
    if (n > 0)
        memcpy(p->ctl + p->ctl_len, buf + at, n);
    p->ctl_len += (unsigned)n;
    if (p->frame_left > 0)
        return PGW_AGAIN;
    p->in_payload = 0;
    memset(chunk, 0, sizeof(*chunk));
    chunk->opcode = p->opcode;
    chunk->data = p->ctl;
    chunk->len = p->ctl_len;
    chunk->first = chunk->fin = chunk->frame_end = 1;
    return p->opcode == PGW_WS_OP_CLOSE ? check_close(p, chunk) : PGW_OK;
}

int pgw_ws_parse(struct pgw_ws_parser *p, uint8_t *buf, size_t len, size_t *used,
                 struct pgw_ws_chunk *chunk)
{
    size_t i = 0;
    int rc = p->close_code != 0 ? PGW_ERR : read_header(p, buf, len, &i);
    if (rc == PGW_OK)
        rc = is_control(p->opcode) ? read_control(p, buf, len, &i, chunk)
                                   : read_data(p, buf, len, &i, chunk);
    *used = i;
    return rc;
}

/* ---- Frame writing ---- */

size_t pgw_ws_frame_header(uint8_t out[PGW_WS_HEADER_MAX], unsigned opcode, int fin, uint64_t len,
                           const uint8_t *mask)
{
    pgw_assert(len >> 63 == 0 && opcode <= 0xF);
    uint8_t mbit = mask != NULL ? 0x80 : 0;
    size_t n = 2;
    out[0] = (uint8_t)((fin ? 0x80 : 0) | opcode);
    if (len < 126) {
        out[1] = mbit | (uint8_t)len;
    } else if (len <= 0xFFFF) {
        out[1] = mbit | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] = mbit | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    if (mask != NULL) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

/* ---- Close frames ---- */

int pgw_ws_close_code_valid(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

size_t pgw_ws_close_payload(uint8_t out[PGW_WS_CONTROL_MAX], int code, const char *reason,
                            size_t reason_len)
{
    pgw_assert(code >= 0 && code <= 0xFFFF);
    size_t n = reason_len;
    if (n > PGW_WS_CONTROL_MAX - 2) {
        n = PGW_WS_CONTROL_MAX - 2;
        /* reason[n] is the first byte cut: while it continues a character, cut that character
         * too (at most 3 continuation bytes in UTF-8, so garbage cannot empty the reason) */
        for (int k = 0; k < 3 && n > 0 && ((uint8_t)reason[n] & 0xC0) == 0x80; k++)
            n--;
    }
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    if (n > 0)
        memcpy(out + 2, reason, n);
    return 2 + n;
}

/* ---- Handshake values ---- */

static int is_base64(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

int pgw_ws_key_valid(const char *v, size_t len)
{
    if (len != 24 || v[22] != '=' || v[23] != '=')
        return 0;
    for (size_t i = 0; i < 22; i++)
        if (!is_base64((unsigned char)v[i]))
            return 0;
    return 1;
}

void pgw_ws_accept(const char *key, size_t key_len, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    static EVP_MD_CTX *ctx; /* process lifetime: one context reused, no allocation per call */
    static EVP_MD *sha1;    /* fetched once: OpenSSL 3 would look it up on every call otherwise */
    unsigned char md[20];
    if (ctx == NULL)
        ctx = EVP_MD_CTX_new();
    if (sha1 == NULL)
        sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
    pgw_assert(ctx != NULL && sha1 != NULL);
    int ok = EVP_DigestInit_ex2(ctx, sha1, NULL) == 1 && EVP_DigestUpdate(ctx, key, key_len) == 1 &&
             EVP_DigestUpdate(ctx, guid, sizeof(guid) - 1) == 1 &&
             EVP_DigestFinal_ex(ctx, md, NULL) == 1;
    pgw_assert(ok);
    int n = EVP_EncodeBlock((unsigned char *)out, md, sizeof(md)); /* NUL-terminated */
    pgw_assert(n == 28);
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

int pgw_ws_list_has(const char *list, size_t len, const char *tok, size_t tok_len, int icase)
{
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        while (i < len && list[i] != ',')
            i++;
        size_t end = i++; /* past the comma */
        while (start < end && is_ows(list[start]))
            start++;
        while (end > start && is_ows(list[end - 1]))
            end--;
        if (end == start)
            continue; /* an empty item */
        const char *item = list + start;
        size_t n = end - start;
        if (icase ? pgw_str_ieq(item, n, tok, tok_len)
                  : (n == tok_len && memcmp(item, tok, n) == 0))
            return 1;
    }
    return 0;
}
