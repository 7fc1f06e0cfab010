/* dvl-synth: `dvl-prep synth` on its own until dvl-prep's main dispatches
 * to prep_synth (then this file goes). */
#include "synth.h"

int main(int argc, char **argv) { return prep_synth(argc, argv); }
