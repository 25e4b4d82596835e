import { errorMessage } from '../contract/errors.js';
import { recoverAfterDeath, type FreezeGuardPlan } from './freeze-guard.js';
import { createLogger } from './log.js';

/**
 * The freeze guard's repair, exec'd by its watcher shell once the checkpointer
 * that armed it is gone (see freeze-guard.ts). argv[2] is the plan, as JSON.
 * It logs to the node's log and exits when the container is no longer frozen
 * and no dump of the dead checkpoint runs.
 */
const plan = JSON.parse(process.argv[2] ?? '{}') as FreezeGuardPlan;
const log = createLogger(plan.log, 'freeze-guard').child({ container: plan.id, runcRoot: plan.runcRoot });
recoverAfterDeath(plan, log).then(
  () => process.exit(0),
  (err: unknown) => {
    log.error(
      { phase: 'freeze-guard', checkpointer: plan.pid, err: errorMessage(err) },
      'could not repair the container after its checkpointer died',
    );
    process.exit(1);
  },
);
