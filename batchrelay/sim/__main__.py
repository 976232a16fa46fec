from batchrelay.sim.command import main

main()
