/* ops.c — the real desktop_ops: every operation on a desktop is a job on
 * libuv's thread pool (jobs.c for clone, start, end, resume and the write
 * budget; agent.c for the guest agent; adopt.c for a held desktop's
 * check). Tests hand the service fakes
 * instead. */
#include "daemon.h"
#include "jobs.h"

const desktop_ops real_desktop_ops = {.clone = jobs_op_clone,
                                      .start = jobs_op_start,
                                      .end = jobs_op_end,
                                      .resume = jobs_op_resume,
                                      .check_budget = jobs_op_check_budget,
                                      .now = jobs_op_now,
                                      .agent_check = agent_op_check,
                                      .read_users = agent_op_read_users,
                                      .adopt_check = adopt_op_check};
