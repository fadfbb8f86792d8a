/* stage.h: the named stages of the request pipeline. Each is a bit so that APIs can state where
 * they may run. The policy engine (a later issue) runs Lua policies here; today the stages carry
 * no policy and pgw_stage_run() returns PGW_OK, but the pipeline already calls every stage at its
 * place and handles every return code, so policies plug in without touching server.c or proxy.c:
 *
 *   rewrite -> (route match) -> access -> balance -> [proxy] -> header_filter -> body_filter -> log
 *
 * Returns of pgw_stage_run(): PGW_OK continue; PGW_DONE a response was produced, stop;
 * PGW_AGAIN the stage waits (the stage resumes the pipeline with pgw_req_resume() later);
 * PGW_ERR failed (500 or close).
 */
#ifndef PGW_STAGE_H
#define PGW_STAGE_H

enum pgw_stage {
    PGW_STAGE_REWRITE = 1 << 0,
    PGW_STAGE_ACCESS = 1 << 1,
    PGW_STAGE_BALANCE = 1 << 2,
    PGW_STAGE_HEADER_FILTER = 1 << 3,
    PGW_STAGE_BODY_FILTER = 1 << 4,
    PGW_STAGE_LOG = 1 << 5,
};

#define PGW_STAGES_YIELDABLE (PGW_STAGE_REWRITE | PGW_STAGE_ACCESS | PGW_STAGE_BALANCE)

struct pgw_req;

const char *pgw_stage_name(enum pgw_stage stage);
int pgw_stage_run(struct pgw_req *req, enum pgw_stage stage);

#endif
