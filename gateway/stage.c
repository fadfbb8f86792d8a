/* stage.c: the stage table (see stage.h). Policies arrive with the policy-engine issue; until then
 * every stage is empty and succeeds. */
#include "stage.h"
#include "pgw.h"

const char *pgw_stage_name(enum pgw_stage stage)
{
    switch (stage) {
    case PGW_STAGE_REWRITE: return "rewrite";
    case PGW_STAGE_ACCESS: return "access";
    case PGW_STAGE_BALANCE: return "balance";
    case PGW_STAGE_HEADER_FILTER: return "header_filter";
    case PGW_STAGE_BODY_FILTER: return "body_filter";
    case PGW_STAGE_LOG: return "log";
    }
    return "unknown";
}

int pgw_stage_run(struct pgw_req *req, enum pgw_stage stage)
{
    PGW_UNUSED(req);
    PGW_UNUSED(stage);
    return PGW_OK;
}
