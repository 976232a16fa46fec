from batchrelay.sim.app import main

main()
