/*
 * Measurement only (bench/trigger_variants.sh, C_FLOOR=1): the floor of a capture trigger
 * written in C — the row as JSON (row_to_json) and one insert into the first event table
 * through a kept SPI plan. Like the PL/pgSQL floor it loses what pgteleport needs (the
 * operation, the table, the key, the rotation); it only shows what queueing a row costs
 * outside PL/pgSQL. pgteleport does not install it.
 */
#include "postgres.h"
#include "fmgr.h"
#include "access/htup_details.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/fmgrprotos.h"
#include "catalog/pg_type.h"

PG_MODULE_MAGIC;
PG_FUNCTION_INFO_V1(capture_floor_c);

static SPIPlanPtr plan = NULL;

Datum
capture_floor_c(PG_FUNCTION_ARGS)
{
    TriggerData *td = (TriggerData *) fcinfo->context;
    HeapTuple   tup;
    Datum       row, json, vals[1];
    Oid         types[1] = {JSONOID};

    if (!CALLED_AS_TRIGGER(fcinfo))
        elog(ERROR, "not called as a trigger");
    tup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
    row = heap_copy_tuple_as_datum(tup, RelationGetDescr(td->tg_relation));
    json = DirectFunctionCall1(row_to_json, row);
    SPI_connect();
    if (plan == NULL)
    {
        plan = SPI_prepare("insert into teleport.event_0 values (nextval('teleport.event_id_seq'), pg_current_xact_id(), clock_timestamp(), 'U', 'public', 'x', null, $1, 0)", 1, types);
        if (plan == NULL)
            elog(ERROR, "SPI_prepare failed");
        SPI_keepplan(plan);
    }
    vals[0] = json;
    if (SPI_execute_plan(plan, vals, NULL, false, 0) != SPI_OK_INSERT)
        elog(ERROR, "insert failed");
    SPI_finish();
    return PointerGetDatum(NULL);
}
